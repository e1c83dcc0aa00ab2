//! `GET /ai/usage`: usage and cost of AI calls from the store's `ai_usage` table, which every
//! node of a cluster adds to.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use portcullis_store::AiUsageFilter;
use portcullis_store::ai_usage::{AiUsageDimension, AiUsageTotals};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{AdminState, ApiError};

/// Length of the report when `from` is not given, in seconds.
const DEFAULT_RANGE_SECONDS: i64 = 24 * 3600;

/// Maximum, and default, number of rows in a report.
const MAX_LIMIT: usize = 10_000;

/// Query parameters that select calls with one value of a dimension.
const FILTERS: [&str; 4] = ["consumer", "credential_id", "route", "model"];

/// A validated `GET /ai/usage` query.
#[derive(Debug, PartialEq)]
struct UsageQuery {
    filter: AiUsageFilter,
    group_by: Vec<AiUsageDimension>,
    /// Maximum number of rows. A report with more fails with 400.
    limit: usize,
}

/// Reports calls, tokens by kind and cost, grouped by the `group_by` dimensions, with totals.
/// The store groups and sums in SQL, so memory grows with the number of groups, which `limit`
/// bounds, and not with the number of stored rows.
pub async fn report(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query.map_err(|rejection| {
        ApiError::bad_request(format!("invalid query string: {}", rejection.body_text()))
    })?;
    let query = parse_query(&pairs, OffsetDateTime::now_utc().unix_timestamp())?;
    let Some(groups) = state
        .control
        .store()
        .group_ai_usage(&query.filter, &query.group_by, query.limit)
        .await?
    else {
        return Err(ApiError::bad_request(format!(
            "the report has more rows than the limit of {}; narrow `from` and `to`, add a filter, group by \
             fewer dimensions or by `day` in place of `hour`, or raise `limit` (at most {MAX_LIMIT})",
            query.limit
        )));
    };

    let mut totals = AiUsageTotals::default();
    let mut report_rows = Vec::with_capacity(groups.len());
    for group in groups {
        totals.add(&group.totals);
        let mut object = Map::new();
        for (dimension, value) in query.group_by.iter().zip(group.values) {
            let value = if dimension.is_time() {
                json!(format_time(value.parse().unwrap_or(0)))
            } else {
                json!(value)
            };
            object.insert(dimension.name().to_string(), value);
        }
        add_totals(&mut object, &group.totals);
        report_rows.push(Value::Object(object));
    }
    let mut totals_object = Map::new();
    add_totals(&mut totals_object, &totals);
    Ok(Json(json!({
        "from": format_time(query.filter.from),
        "to": format_time(query.filter.to),
        "group_by": query.group_by.iter().map(|dimension| dimension.name()).collect::<Vec<_>>(),
        "rows": report_rows,
        "totals": totals_object,
    })))
}

fn add_totals(object: &mut Map<String, Value>, totals: &AiUsageTotals) {
    if let Ok(Value::Object(fields)) = serde_json::to_value(totals) {
        object.extend(fields);
    }
}

fn format_time(unix_seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Validates the query parameters. `now` is the default `to`, in seconds since the Unix epoch.
/// Usage is stored per hour, so `from` is rounded down to the start of its hour and `to` up to
/// the end of its hour. The rounded `to` selects the same rows as the given one.
fn parse_query(pairs: &[(String, String)], now: i64) -> Result<UsageQuery, ApiError> {
    let mut seen = std::collections::HashSet::new();
    let mut filter = AiUsageFilter::default();
    let mut from = None;
    let mut to = None;
    let mut group_by = Vec::new();
    let mut limit = MAX_LIMIT;

    for (name, value) in pairs {
        if !seen.insert(name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "query parameter `{name}` is given more than once"
            )));
        }
        match name.as_str() {
            "from" => from = Some(parse_time(name, value)?),
            "to" => to = Some(parse_time(name, value)?),
            "group_by" => group_by = parse_group_by(value)?,
            "limit" => limit = parse_limit(value)?,
            "consumer" | "credential_id" | "route" | "model" => {
                if value.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "query parameter `{name}` is empty; leave it out to report every {name}"
                    )));
                }
                let field = match name.as_str() {
                    "consumer" => &mut filter.consumer,
                    "credential_id" => &mut filter.credential_id,
                    "route" => &mut filter.route,
                    _ => &mut filter.model,
                };
                *field = Some(value.clone());
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{name}`; expected from, to, group_by, limit, {}",
                    FILTERS.join(", ")
                )));
            }
        }
    }

    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - DEFAULT_RANGE_SECONDS);
    if from >= to {
        return Err(ApiError::bad_request(format!(
            "`from` ({}) must be earlier than `to` ({})",
            format_time(from),
            format_time(to)
        )));
    }

    filter.from = portcullis_store::ai_usage::bucket_start(from);
    filter.to = portcullis_store::ai_usage::bucket_end(to);
    Ok(UsageQuery {
        filter,
        group_by,
        limit,
    })
}

fn parse_limit(value: &str) -> Result<usize, ApiError> {
    match value.parse::<usize>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(ApiError::bad_request(format!(
            "query parameter `limit` is `{value}`; expected an integer from 1 to {MAX_LIMIT}"
        ))),
    }
}

/// The start of the last hour that RFC 3339 can write, 9999-12-31T23:00:00Z. A later time
/// would round up to an end of range with a five-digit year.
const LAST_HOUR_START: i64 = 253_402_297_200;

fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    let seconds = OffsetDateTime::parse(value, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|error| {
            ApiError::bad_request(format!(
                "query parameter `{name}` is not an RFC 3339 time such as 2026-12-04T10:00:00Z: {error}"
            ))
        })?;
    if seconds > LAST_HOUR_START {
        return Err(ApiError::bad_request(format!(
            "query parameter `{name}` is `{value}`; the latest time it can be is \
             9999-12-31T23:00:00Z"
        )));
    }
    Ok(seconds)
}

fn parse_group_by(value: &str) -> Result<Vec<AiUsageDimension>, ApiError> {
    let mut dimensions = Vec::new();
    for name in value.split(',').map(str::trim) {
        let Some(dimension) = AiUsageDimension::parse(name) else {
            let names: Vec<&str> = AiUsageDimension::ALL
                .iter()
                .map(|dimension| dimension.name())
                .collect();
            return Err(ApiError::bad_request(format!(
                "`group_by` has the unknown dimension `{name}`; expected a comma-separated list of {}",
                names.join(", ")
            )));
        };
        if dimensions.contains(&dimension) {
            return Err(ApiError::bad_request(format!(
                "`group_by` lists `{name}` more than once"
            )));
        }
        dimensions.push(dimension);
    }
    if dimensions.contains(&AiUsageDimension::Hour) && dimensions.contains(&AiUsageDimension::Day) {
        return Err(ApiError::bad_request(
            "`group_by` lists both `hour` and `day`; use one of them",
        ));
    }
    Ok(dimensions)
}

#[cfg(test)]
mod tests {
    use portcullis_store::ai_usage::BUCKET_SECONDS;

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn defaults_cover_the_last_day() {
        let query = parse_query(&[], 100_000).unwrap();
        assert_eq!(
            query.filter.to,
            100_000 - 100_000 % BUCKET_SECONDS + BUCKET_SECONDS
        );
        assert_eq!(
            query.filter.from,
            100_000 - 24 * 3600 - 100_000 % BUCKET_SECONDS
        );
        assert!(query.group_by.is_empty());
        assert_eq!(query.limit, MAX_LIMIT);
    }

    #[test]
    fn from_rounds_down_to_the_hour() {
        let query = parse_query(
            &pairs(&[
                ("from", "2026-12-04T10:30:00Z"),
                ("to", "2026-12-04T12:00:00Z"),
            ]),
            0,
        )
        .unwrap();
        assert_eq!(format_time(query.filter.from), "2026-12-04T10:00:00Z");
        assert_eq!(format_time(query.filter.to), "2026-12-04T12:00:00Z");
    }

    #[test]
    fn to_rounds_up_to_the_hour() {
        let query = parse_query(
            &pairs(&[
                ("from", "2026-12-04T10:00:00Z"),
                ("to", "2026-12-04T11:00:01Z"),
            ]),
            0,
        )
        .unwrap();
        assert_eq!(format_time(query.filter.to), "2026-12-04T12:00:00Z");
    }

    #[test]
    fn day_and_limit_parse() {
        let query = parse_query(&pairs(&[("group_by", "day,model"), ("limit", "5")]), 0).unwrap();
        assert_eq!(
            query.group_by,
            vec![AiUsageDimension::Day, AiUsageDimension::Model]
        );
        assert_eq!(query.limit, 5);
    }

    #[test]
    fn filters_and_group_by_parse() {
        let query = parse_query(
            &pairs(&[
                ("group_by", "consumer,model"),
                ("consumer", "alice"),
                ("route", "llm"),
            ]),
            10_000,
        )
        .unwrap();
        assert_eq!(
            query.group_by,
            vec![AiUsageDimension::Consumer, AiUsageDimension::Model]
        );
        assert_eq!(query.filter.consumer.as_deref(), Some("alice"));
        assert_eq!(query.filter.route.as_deref(), Some("llm"));
        assert_eq!(query.filter.model, None);
    }

    #[test]
    fn last_hour_of_year_9999_accepted() {
        let query = parse_query(&pairs(&[("to", "9999-12-31T23:00:00Z")]), 100_000).unwrap();
        assert_eq!(format_time(query.filter.to), "9999-12-31T23:00:00Z");
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let cases: &[&[(&str, &str)]] = &[
            &[("from", "yesterday")],
            &[("to", "2026-12-04")],
            &[
                ("from", "2026-12-04T12:00:00Z"),
                ("to", "2026-12-04T11:00:00Z"),
            ],
            &[("group_by", "tenant")],
            &[("group_by", "model,model")],
            &[("group_by", "")],
            &[("group_by", "hour,day")],
            &[("limit", "0")],
            &[("limit", "10001")],
            &[("limit", "ten")],
            &[("consumer", "")],
            &[("tenant", "x")],
            &[("model", "a"), ("model", "b")],
            &[("to", "9999-12-31T23:00:01Z")],
            &[
                ("from", "9999-12-31T23:00:01Z"),
                ("to", "9999-12-31T23:30:00Z"),
            ],
        ];
        for case in cases {
            let error = parse_query(&pairs(case), 100_000).unwrap_err();
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST, "{case:?}");
        }
    }
}
