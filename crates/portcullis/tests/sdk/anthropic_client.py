"""Runs calls through the gateway's /v1/messages with the official `anthropic` SDK and prints
the results as JSON.

Usage: anthropic_client.py BASE_URL API_KEY CASES_JSON, where CASES_JSON is a list of
[mode, model] pairs and mode is create, stream, tools or stream_error.
"""

import json
import sys

import anthropic

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
MESSAGES = [{"role": "user", "content": "Weather in Paris and Oslo?"}]


def run(client, mode, model):
    if mode == "create":
        message = client.messages.create(
            model=model, max_tokens=256, system="Be brief.", messages=MESSAGES
        )
        return {
            "text": "".join(block.text for block in message.content if block.type == "text"),
            "stop_reason": message.stop_reason,
            "input_tokens": message.usage.input_tokens,
            "output_tokens": message.usage.output_tokens,
        }
    if mode == "stream":
        with client.messages.stream(model=model, max_tokens=256, messages=MESSAGES) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        return {"text": text, "output_tokens": final.usage.output_tokens}
    if mode == "tools":
        message = client.messages.create(
            model=model, max_tokens=256, messages=MESSAGES, tools=[WEATHER_TOOL]
        )
        return {
            "stop_reason": message.stop_reason,
            "calls": [
                {"id": block.id, "name": block.name, "input": block.input}
                for block in message.content
                if block.type == "tool_use"
            ],
        }
    if mode == "stream_error":
        text = ""
        try:
            with client.messages.stream(model=model, max_tokens=256, messages=MESSAGES) as stream:
                for chunk in stream.text_stream:
                    text += chunk
        except anthropic.APIError as error:
            return {"text": text, "error": type(error).__name__, "message": str(error)}
        return {"text": text, "error": None}
    raise ValueError(f"unknown mode {mode}")


def main():
    base_url, api_key, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=15)
    results = []
    for mode, model in cases:
        try:
            results.append(run(client, mode, model))
        except anthropic.APIStatusError as error:
            results.append({"status": error.status_code, "body": error.body})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
