//! Aggregated usage and cost of AI calls: the rows of the `ai_usage` table and their grouping
//! for reports.
//!
//! Rows are usage data, not configuration, so writing them never changes the config version.
//! The stored resolution is one hour, so a report can select and group whole hours only.

use std::collections::BTreeMap;

use serde::Serialize;

/// Length of one aggregation period, in seconds. Reports select whole periods.
pub const BUCKET_SECONDS: i64 = 3600;

/// Length of one `day` group, in seconds. Days start at midnight UTC.
pub const DAY_SECONDS: i64 = 24 * 3600;

/// Returns the start of the period that contains `unix_seconds`.
pub fn bucket_start(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(BUCKET_SECONDS) * BUCKET_SECONDS
}

/// Returns the start of the first period that starts at or after `unix_seconds`.
pub fn bucket_end(unix_seconds: i64) -> i64 {
    bucket_start(unix_seconds.saturating_add(BUCKET_SECONDS - 1))
}

/// The identity of one `ai_usage` row. An empty consumer or credential id means that the call
/// had none, as on a route without authentication.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AiUsageKey {
    /// Start of the period, in seconds since the Unix epoch.
    pub bucket_start: i64,
    pub consumer: String,
    pub credential_id: String,
    pub route: String,
    /// The model as the client sent it.
    pub model: String,
    /// `provider/model` of the target that served the calls.
    pub target: String,
}

/// Calls, tokens by kind and cost, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AiUsageTotals {
    pub calls: u64,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// Sum of the calls' costs; a call whose target has no price adds 0.
    pub cost: f64,
    /// Calls with a token count estimated from characters.
    pub estimated_calls: u64,
}

impl AiUsageTotals {
    /// Adds `other` to these totals. Counts saturate instead of overflowing.
    pub fn add(&mut self, other: &AiUsageTotals) {
        self.calls = self.calls.saturating_add(other.calls);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.cost += other.cost;
        self.estimated_calls = self.estimated_calls.saturating_add(other.estimated_calls);
    }
}

/// One `ai_usage` row.
#[derive(Debug, Clone, PartialEq)]
pub struct AiUsageRow {
    pub key: AiUsageKey,
    pub totals: AiUsageTotals,
}

/// The rows a report reads: periods that start in `[from, to)`, narrowed by the filters that
/// are set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AiUsageFilter {
    /// Seconds since the Unix epoch.
    pub from: i64,
    /// Seconds since the Unix epoch, exclusive.
    pub to: i64,
    pub consumer: Option<String>,
    pub credential_id: Option<String>,
    pub route: Option<String>,
    pub model: Option<String>,
}

/// A dimension that a report can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AiUsageDimension {
    Consumer,
    CredentialId,
    Route,
    Model,
    Target,
    /// The start of the hour.
    Hour,
    /// The start of the UTC day.
    Day,
}

impl AiUsageDimension {
    /// Every dimension, in the order that error messages list them.
    pub const ALL: [AiUsageDimension; 7] = [
        AiUsageDimension::Consumer,
        AiUsageDimension::CredentialId,
        AiUsageDimension::Route,
        AiUsageDimension::Model,
        AiUsageDimension::Target,
        AiUsageDimension::Hour,
        AiUsageDimension::Day,
    ];

    /// Returns the name used in `group_by` and as the key of a report row.
    pub fn name(self) -> &'static str {
        match self {
            AiUsageDimension::Consumer => "consumer",
            AiUsageDimension::CredentialId => "credential_id",
            AiUsageDimension::Route => "route",
            AiUsageDimension::Model => "model",
            AiUsageDimension::Target => "target",
            AiUsageDimension::Hour => "hour",
            AiUsageDimension::Day => "day",
        }
    }

    /// Returns whether the values of this dimension are times, in seconds since the Unix epoch.
    pub fn is_time(self) -> bool {
        matches!(self, AiUsageDimension::Hour | AiUsageDimension::Day)
    }

    /// Parses a dimension name.
    pub fn parse(name: &str) -> Option<AiUsageDimension> {
        Self::ALL
            .into_iter()
            .find(|dimension| dimension.name() == name)
    }

    /// Returns this dimension's value in `key`. The hour and the day are their start in seconds
    /// since the Unix epoch, as text, so that the caller can format it.
    fn value(self, key: &AiUsageKey) -> String {
        match self {
            AiUsageDimension::Consumer => key.consumer.clone(),
            AiUsageDimension::CredentialId => key.credential_id.clone(),
            AiUsageDimension::Route => key.route.clone(),
            AiUsageDimension::Model => key.model.clone(),
            AiUsageDimension::Target => key.target.clone(),
            AiUsageDimension::Hour => key.bucket_start.to_string(),
            AiUsageDimension::Day => {
                (key.bucket_start.div_euclid(DAY_SECONDS) * DAY_SECONDS).to_string()
            }
        }
    }

    /// Returns the SQL expression for [`AiUsageDimension::value`], the same on SQLite and
    /// PostgreSQL. Both round integer division and `%` toward zero, so the day is computed
    /// with a remainder that is made non-negative.
    fn sql_expression(self) -> &'static str {
        match self {
            AiUsageDimension::Consumer => "consumer",
            AiUsageDimension::CredentialId => "credential_id",
            AiUsageDimension::Route => "route",
            AiUsageDimension::Model => "model",
            AiUsageDimension::Target => "target",
            AiUsageDimension::Hour => "CAST(bucket_start AS TEXT)",
            AiUsageDimension::Day => {
                "CAST(bucket_start - ((bucket_start % 86400) + 86400) % 86400 AS TEXT)"
            }
        }
    }
}

/// The calls, tokens and cost of one group of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct AiUsageGroup {
    /// One value per grouping dimension, in the order of the dimensions.
    pub values: Vec<String>,
    pub totals: AiUsageTotals,
}

/// Sums `rows` per distinct value of the `dimensions`, in the order given. Returns the groups
/// sorted by their values, each with one value per dimension.
///
/// Reports group in SQL with [`crate::Store::group_ai_usage`], which returns the same groups.
/// This in-memory grouping is the reference that the store tests compare it with.
pub fn group_ai_usage(rows: &[AiUsageRow], dimensions: &[AiUsageDimension]) -> Vec<AiUsageGroup> {
    let mut groups: BTreeMap<Vec<String>, AiUsageTotals> = BTreeMap::new();
    for row in rows {
        let values = dimensions
            .iter()
            .map(|dimension| dimension.value(&row.key))
            .collect();
        groups.entry(values).or_default().add(&row.totals);
    }
    groups
        .into_iter()
        .map(|(values, totals)| AiUsageGroup { values, totals })
        .collect()
}

/// Converts a count to a database integer. Counts above `i64::MAX` are stored as `i64::MAX`.
pub(crate) fn to_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// An `ai_usage` row as the databases return it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SqlRow {
    pub bucket_start: i64,
    pub consumer: String,
    pub credential_id: String,
    pub route: String,
    pub model: String,
    pub target: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: f64,
    pub estimated_calls: i64,
}

impl From<SqlRow> for AiUsageRow {
    fn from(row: SqlRow) -> Self {
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        AiUsageRow {
            key: AiUsageKey {
                bucket_start: row.bucket_start,
                consumer: row.consumer,
                credential_id: row.credential_id,
                route: row.route,
                model: row.model,
                target: row.target,
            },
            totals: AiUsageTotals {
                calls: count(row.calls),
                input_tokens: count(row.input_tokens),
                cache_read_tokens: count(row.cache_read_tokens),
                cache_write_tokens: count(row.cache_write_tokens),
                output_tokens: count(row.output_tokens),
                reasoning_tokens: count(row.reasoning_tokens),
                cost: row.cost,
                estimated_calls: count(row.estimated_calls),
            },
        }
    }
}

/// The condition that selects the rows of an [`AiUsageFilter`], bound by [`bind_filter`]. The
/// same text runs on SQLite and PostgreSQL.
pub(crate) const FILTER_CONDITION: &str = "bucket_start >= $1 AND bucket_start < $2 \
     AND (CAST($3 AS TEXT) IS NULL OR consumer = $3) \
     AND (CAST($4 AS TEXT) IS NULL OR credential_id = $4) \
     AND (CAST($5 AS TEXT) IS NULL OR route = $5) \
     AND (CAST($6 AS TEXT) IS NULL OR model = $6)";

/// Binds the parameters `$1` to `$6` of [`FILTER_CONDITION`].
pub(crate) fn bind_filter<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    filter: &'q AiUsageFilter,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.consumer.as_deref())
        .bind(filter.credential_id.as_deref())
        .bind(filter.route.as_deref())
        .bind(filter.model.as_deref())
}

/// Returns the query that reads the rows of an [`AiUsageFilter`], ordered by key.
pub(crate) fn select_rows_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM ai_usage WHERE {FILTER_CONDITION} \
         ORDER BY bucket_start, consumer, credential_id, route, model, target"
    )
}

/// Returns the query that sums the rows of an [`AiUsageFilter`] per distinct value of
/// `dimensions`. Its columns are one text value per dimension, the counters of
/// [`AiUsageTotals`] in field order, then the number of rows summed. `$7` is the maximum
/// number of groups returned.
///
/// `SUM` of 64-bit integers is an `INTEGER` on SQLite and a `numeric` on PostgreSQL, so every
/// sum is cast to `BIGINT`. A sum above `i64::MAX` fails the query on both databases.
/// Without dimensions the query returns one row, with a row count of 0 when nothing matched.
pub(crate) fn group_sql(dimensions: &[AiUsageDimension]) -> String {
    let mut columns: Vec<String> = dimensions
        .iter()
        .map(|dimension| dimension.sql_expression().to_owned())
        .collect();
    for counter in [
        "calls",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
    ] {
        columns.push(format!("CAST(COALESCE(SUM({counter}), 0) AS BIGINT)"));
    }
    columns.push("CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION)".to_owned());
    columns.push("CAST(COALESCE(SUM(estimated_calls), 0) AS BIGINT)".to_owned());
    columns.push("COUNT(*)".to_owned());

    let mut sql = format!(
        "SELECT {} FROM ai_usage WHERE {FILTER_CONDITION}",
        columns.join(", ")
    );
    if !dimensions.is_empty() {
        let positions: Vec<String> = (1..=dimensions.len())
            .map(|position| position.to_string())
            .collect();
        sql.push_str(" GROUP BY ");
        sql.push_str(&positions.join(", "));
    }
    sql.push_str(" LIMIT $7");
    sql
}

/// Decodes the rows of [`group_sql`] for `dimensions` dimensions and sorts them by their
/// values, as [`group_ai_usage`] does. Returns `None` when there are more than `max_groups`.
pub(crate) fn decode_groups<R>(
    rows: &[R],
    dimensions: usize,
    max_groups: usize,
) -> Result<Option<Vec<AiUsageGroup>>, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    if rows.len() > max_groups {
        return Ok(None);
    }
    let count = |value: i64| u64::try_from(value).unwrap_or(0);
    let mut groups = Vec::with_capacity(rows.len());
    for row in rows {
        let values = (0..dimensions)
            .map(|index| row.try_get::<String, _>(index))
            .collect::<Result<Vec<_>, _>>()?;
        let counter = |offset: usize| row.try_get::<i64, _>(dimensions + offset).map(count);
        let totals = AiUsageTotals {
            calls: counter(0)?,
            input_tokens: counter(1)?,
            cache_read_tokens: counter(2)?,
            cache_write_tokens: counter(3)?,
            output_tokens: counter(4)?,
            reasoning_tokens: counter(5)?,
            cost: row.try_get::<f64, _>(dimensions + 6)?,
            estimated_calls: counter(7)?,
        };
        let row_count: i64 = row.try_get(dimensions + 8)?;
        if row_count > 0 {
            groups.push(AiUsageGroup { values, totals });
        }
    }
    groups.sort_by(|left, right| left.values.cmp(&right.values));
    Ok(Some(groups))
}

/// Columns of [`SqlRow`], in order.
pub(crate) const COLUMNS: &str = "bucket_start, consumer, credential_id, route, model, target, calls, input_tokens, \
     cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost, estimated_calls";

/// Inserts a row or adds its totals to the existing one. The same text runs on SQLite and
/// PostgreSQL.
pub(crate) const UPSERT: &str = "INSERT INTO ai_usage (bucket_start, consumer, credential_id, route, model, target, calls, \
     input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost, estimated_calls) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (bucket_start, consumer, credential_id, route, model, target) DO UPDATE SET \
     calls = ai_usage.calls + excluded.calls, \
     input_tokens = ai_usage.input_tokens + excluded.input_tokens, \
     cache_read_tokens = ai_usage.cache_read_tokens + excluded.cache_read_tokens, \
     cache_write_tokens = ai_usage.cache_write_tokens + excluded.cache_write_tokens, \
     output_tokens = ai_usage.output_tokens + excluded.output_tokens, \
     reasoning_tokens = ai_usage.reasoning_tokens + excluded.reasoning_tokens, \
     cost = ai_usage.cost + excluded.cost, \
     estimated_calls = ai_usage.estimated_calls + excluded.estimated_calls";

/// Binds the parameters of [`UPSERT`] for `row`.
pub(crate) fn bind_upsert<'q, DB>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    row: &'q AiUsageRow,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let totals = &row.totals;
    query
        .bind(row.key.bucket_start)
        .bind(row.key.consumer.as_str())
        .bind(row.key.credential_id.as_str())
        .bind(row.key.route.as_str())
        .bind(row.key.model.as_str())
        .bind(row.key.target.as_str())
        .bind(to_sql(totals.calls))
        .bind(to_sql(totals.input_tokens))
        .bind(to_sql(totals.cache_read_tokens))
        .bind(to_sql(totals.cache_write_tokens))
        .bind(to_sql(totals.output_tokens))
        .bind(to_sql(totals.reasoning_tokens))
        .bind(totals.cost)
        .bind(to_sql(totals.estimated_calls))
}

/// Expands to the `ai_usage` methods of [`crate::Store`], for use inside the `impl Store`
/// block of a backend with a `pool` field. The SQL text is the same on SQLite and PostgreSQL.
macro_rules! ai_usage_store_methods {
    () => {
        fn add_ai_usage<'a>(
            &'a self,
            rows: &'a [$crate::AiUsageRow],
        ) -> $crate::StoreFuture<'a, ()> {
            Box::pin(async move {
                let mut tx = self.pool.begin().await?;
                for row in rows {
                    $crate::ai_usage::bind_upsert(sqlx::query($crate::ai_usage::UPSERT), row)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            })
        }

        fn ai_usage<'a>(
            &'a self,
            filter: &'a $crate::AiUsageFilter,
        ) -> $crate::StoreFuture<'a, Vec<$crate::AiUsageRow>> {
            Box::pin(async move {
                let sql = $crate::ai_usage::select_rows_sql();
                let rows = $crate::ai_usage::bind_filter(sqlx::query(&sql), filter)
                    .fetch_all(&self.pool)
                    .await?;
                let mut usage = Vec::with_capacity(rows.len());
                for row in &rows {
                    let row: $crate::ai_usage::SqlRow = sqlx::FromRow::from_row(row)?;
                    usage.push($crate::AiUsageRow::from(row));
                }
                Ok(usage)
            })
        }

        fn group_ai_usage<'a>(
            &'a self,
            filter: &'a $crate::AiUsageFilter,
            dimensions: &'a [$crate::ai_usage::AiUsageDimension],
            max_groups: usize,
        ) -> $crate::StoreFuture<'a, Option<Vec<$crate::ai_usage::AiUsageGroup>>> {
            Box::pin(async move {
                let sql = $crate::ai_usage::group_sql(dimensions);
                let limit = i64::try_from(max_groups).unwrap_or(i64::MAX - 1) + 1;
                let rows = $crate::ai_usage::bind_filter(sqlx::query(&sql), filter)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                Ok($crate::ai_usage::decode_groups(
                    &rows,
                    dimensions.len(),
                    max_groups,
                )?)
            })
        }
    };
}
pub(crate) use ai_usage_store_methods;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(consumer: &str, model: &str, bucket: i64, calls: u64, cost: f64) -> AiUsageRow {
        AiUsageRow {
            key: AiUsageKey {
                bucket_start: bucket,
                consumer: consumer.into(),
                credential_id: format!("key-{consumer}"),
                route: "llm".into(),
                model: model.into(),
                target: "p/m".into(),
            },
            totals: AiUsageTotals {
                calls,
                input_tokens: calls * 10,
                output_tokens: calls * 2,
                cost,
                ..AiUsageTotals::default()
            },
        }
    }

    #[test]
    fn bucket_start_rounds_down_to_the_hour() {
        assert_eq!(bucket_start(7199), 3600);
        assert_eq!(bucket_start(7200), 7200);
        assert_eq!(bucket_start(-1), -3600);
    }

    #[test]
    fn grouping_sums_per_value() {
        let rows = [
            row("alice", "smart", 0, 1, 0.5),
            row("alice", "fast", 3600, 2, 0.25),
            row("bob", "smart", 0, 4, 1.0),
        ];
        let groups = group_ai_usage(&rows, &[AiUsageDimension::Consumer]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].values, vec!["alice".to_string()]);
        assert_eq!(groups[0].totals.calls, 3);
        assert_eq!(groups[0].totals.input_tokens, 30);
        assert_eq!(groups[0].totals.cost, 0.75);
        assert_eq!(groups[1].values, vec!["bob".to_string()]);
        assert_eq!(groups[1].totals.calls, 4);
    }

    #[test]
    fn grouping_by_two_dimensions_keeps_their_order() {
        let rows = [
            row("alice", "smart", 0, 1, 0.0),
            row("alice", "smart", 3600, 1, 0.0),
            row("alice", "fast", 0, 1, 0.0),
        ];
        let groups = group_ai_usage(&rows, &[AiUsageDimension::Model, AiUsageDimension::Hour]);
        let keys: Vec<Vec<String>> = groups.into_iter().map(|group| group.values).collect();
        assert_eq!(
            keys,
            vec![
                vec!["fast".to_string(), "0".to_string()],
                vec!["smart".to_string(), "0".to_string()],
                vec!["smart".to_string(), "3600".to_string()],
            ]
        );
    }

    #[test]
    fn grouping_by_day_starts_at_midnight_utc() {
        let rows = [
            row("a", "m", 23 * 3600, 1, 0.0),
            row("a", "m", DAY_SECONDS, 2, 0.0),
            row("a", "m", DAY_SECONDS + 5 * 3600, 4, 0.0),
            row("a", "m", -3600, 8, 0.0),
        ];
        let groups = group_ai_usage(&rows, &[AiUsageDimension::Day]);
        let days: Vec<(String, u64)> = groups
            .into_iter()
            .map(|group| (group.values[0].clone(), group.totals.calls))
            .collect();
        assert_eq!(
            days,
            vec![
                ("-86400".to_string(), 8),
                ("0".to_string(), 1),
                ("86400".to_string(), 6),
            ]
        );
    }

    #[test]
    fn bucket_end_rounds_up_to_the_hour() {
        assert_eq!(bucket_end(3600), 3600);
        assert_eq!(bucket_end(3601), 7200);
        assert_eq!(bucket_end(-1), 0);
    }

    #[test]
    fn grouping_by_nothing_returns_one_total() {
        let rows = [row("a", "m", 0, 1, 0.0), row("b", "m", 0, 2, 0.0)];
        let groups = group_ai_usage(&rows, &[]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].totals.calls, 3);
    }

    #[test]
    fn dimension_names_parse_back() {
        for dimension in AiUsageDimension::ALL {
            assert_eq!(AiUsageDimension::parse(dimension.name()), Some(dimension));
        }
        assert_eq!(AiUsageDimension::parse("tenant"), None);
    }
}
