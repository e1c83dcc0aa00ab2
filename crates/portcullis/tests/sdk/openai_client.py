"""Runs calls through the gateway with the official `openai` SDK and prints the results as JSON.

Usage: openai_client.py BASE_URL API_KEY CASES_JSON, where CASES_JSON is a list of
[mode, model] pairs and mode is chat, stream, tools, stream_tools, tool_round_trip,
stream_tool_round_trip, embeddings, stream_error, gzip_chat or zstd_chat. The last two send the
chat request body compressed, through the SDK's `post` with raw `content`, because the SDK does
not compress request bodies itself.
"""

import gzip
import json
import sys

import openai

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Oslo?"},
]


def stream_tool_calls(stream):
    """Joins the tool call deltas of a chunk stream. Returns the calls and the finish reason."""
    calls = {}
    finish_reason = None
    for chunk in stream:
        for choice in chunk.choices:
            finish_reason = choice.finish_reason or finish_reason
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
    return [calls[index] for index in sorted(calls)], finish_reason


def tool_round_trip(client, model, stream):
    """Requests tool calls, then sends the assistant message back as the SDK returned it, with
    one result per call. Returns the call ids and the final message content."""
    messages = list(MESSAGES)
    if stream:
        calls, _ = stream_tool_calls(
            client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], stream=True)
        )
        messages.append({
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
                for call in calls
            ],
        })
        ids = [call["id"] for call in calls]
    else:
        response = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
        message = response.choices[0].message
        messages.append(message)
        ids = [call.id for call in message.tool_calls]
    for index, call_id in enumerate(ids):
        messages.append({"role": "tool", "tool_call_id": call_id, "content": f"{18 - index}C"})
    if stream:
        content = ""
        for chunk in client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], stream=True):
            for choice in chunk.choices:
                content += choice.delta.content or ""
    else:
        response = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
        content = response.choices[0].message.content
    return {"ids": ids, "content": content}


def run(client, mode, model):
    if mode == "chat":
        response = client.chat.completions.create(model=model, messages=MESSAGES)
        return {
            "content": response.choices[0].message.content,
            "finish_reason": response.choices[0].finish_reason,
            "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens,
        }
    if mode == "stream":
        content = ""
        usage = None
        stream = client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                content += choice.delta.content or ""
        return {"content": content, "completion_tokens": usage}
    if mode == "tools":
        response = client.chat.completions.create(
            model=model, messages=MESSAGES, tools=[WEATHER_TOOL]
        )
        calls = response.choices[0].message.tool_calls or []
        return {
            "finish_reason": response.choices[0].finish_reason,
            "calls": [
                {"id": call.id, "name": call.function.name, "arguments": json.loads(call.function.arguments)}
                for call in calls
            ],
        }
    if mode == "stream_tools":
        ordered, finish_reason = stream_tool_calls(
            client.chat.completions.create(model=model, messages=MESSAGES, tools=[WEATHER_TOOL], stream=True)
        )
        for entry in ordered:
            entry["arguments"] = json.loads(entry["arguments"])
        return {"finish_reason": finish_reason, "calls": ordered}
    if mode == "tool_round_trip":
        return tool_round_trip(client, model, stream=False)
    if mode == "stream_tool_round_trip":
        return tool_round_trip(client, model, stream=True)
    if mode == "embeddings":
        response = client.embeddings.create(model=model, input="hello")
        return {"embedding": response.data[0].embedding, "prompt_tokens": response.usage.prompt_tokens}
    if mode == "stream_error":
        content = ""
        try:
            for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True):
                for choice in chunk.choices:
                    content += choice.delta.content or ""
        except openai.APIError as error:
            return {"content": content, "error": type(error).__name__, "message": error.message}
        return {"content": content, "error": None}
    if mode in ("gzip_chat", "zstd_chat"):
        body = json.dumps({"model": model, "messages": MESSAGES}).encode()
        # zstd_chat labels a gzip body with a coding the gateway does not decode.
        coding = "gzip" if mode == "gzip_chat" else "zstd"
        response = client.post(
            "/chat/completions",
            cast_to=openai.types.chat.ChatCompletion,
            content=gzip.compress(body),
            options={"headers": {"Content-Type": "application/json", "Content-Encoding": coding}},
        )
        return {
            "content": response.choices[0].message.content,
            "prompt_tokens": response.usage.prompt_tokens,
        }
    raise ValueError(f"unknown mode {mode}")


def main():
    base_url, api_key, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=15)
    results = []
    for mode, model in cases:
        try:
            results.append(run(client, mode, model))
        except openai.APIStatusError as error:
            results.append({"status": error.status_code, "body": error.body})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
