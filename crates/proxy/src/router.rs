//! Route matching on the canonical request.
//!
//! A route matches when its host list accepts the host, its method list accepts the method, and
//! one of its paths matches. A plain path is a prefix that matches whole segments: `/echo`
//! matches `/echo` and `/echo/x` but not `/echoes`. An exact path matches only itself.
//!
//! Among matching routes the most specific wins: a route that names the host beats one that
//! does not (an exact host beats a wildcard), then an exact path beats a prefix, then the longer
//! path wins, then the route that comes first in the input order. Snapshots list routes by name,
//! so between two otherwise equal routes the one whose name sorts first wins.

use std::sync::Arc;

use http::Method;

/// How one route path matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    Prefix(String),
    Exact(String),
}

/// How one route host matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`; matches any name that ends with it.
    Suffix(String),
}

impl HostRule {
    pub fn parse(host: &str) -> Self {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix('*') {
            Some(suffix) => HostRule::Suffix(suffix.to_string()),
            None => HostRule::Exact(host),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Exact(exact) => exact == host,
            HostRule::Suffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

/// One entry of the table: a single path of a route, so that each path ranks on its own.
#[derive(Debug)]
struct Entry<R> {
    rule: PathRule,
    hosts: Arc<[HostRule]>,
    methods: Arc<[Method]>,
    route: Arc<R>,
    rank: (u8, u8, usize, usize),
}

/// The result of a lookup.
#[derive(Debug)]
pub struct RouteMatch<'a, R> {
    pub route: &'a Arc<R>,
    /// The matched path prefix, for `strip_prefix`.
    pub matched: &'a str,
}

/// Why no route was returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMatch {
    /// No route accepts the host and path.
    NotFound,
    /// A route accepts the host and path, but not the method.
    MethodNotAllowed,
}

/// The routes of one snapshot, ranked for lookup.
#[derive(Debug)]
pub struct Router<R> {
    entries: Vec<Entry<R>>,
}

impl<R> Default for Router<R> {
    fn default() -> Self {
        Router {
            entries: Vec::new(),
        }
    }
}

/// A route definition for [`Router::build`].
pub struct RouteDefinition<R> {
    pub paths: Vec<PathRule>,
    pub hosts: Vec<HostRule>,
    pub methods: Vec<Method>,
    pub route: Arc<R>,
}

impl<R> Router<R> {
    /// Builds the table; the order of `routes` breaks ties.
    pub fn build(routes: Vec<RouteDefinition<R>>) -> Self {
        let mut entries = Vec::new();
        for (order, definition) in routes.into_iter().enumerate() {
            let host_rank = if definition.hosts.is_empty() {
                0
            } else if definition
                .hosts
                .iter()
                .all(|host| matches!(host, HostRule::Exact(_)))
            {
                2
            } else {
                1
            };
            let hosts: Arc<[HostRule]> = definition.hosts.into();
            let methods: Arc<[Method]> = definition.methods.into();
            for rule in definition.paths {
                let (exact, length) = match &rule {
                    PathRule::Exact(path) => (1, path.len()),
                    PathRule::Prefix(path) => (0, path.len()),
                };
                entries.push(Entry {
                    rule,
                    hosts: hosts.clone(),
                    methods: methods.clone(),
                    route: definition.route.clone(),
                    rank: (host_rank, exact, length, usize::MAX - order),
                });
            }
        }
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.rank));
        Router { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finds the most specific route for a canonical host, path and method.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
    ) -> Result<RouteMatch<'_, R>, NoMatch> {
        let mut method_mismatch = false;
        for entry in &self.entries {
            if !entry.hosts.is_empty() && !entry.hosts.iter().any(|rule| rule.matches(host)) {
                continue;
            }
            let matched = match &entry.rule {
                PathRule::Exact(exact) => (path == exact).then_some(exact.as_str()),
                PathRule::Prefix(prefix) => prefix_matches(prefix, path).then_some(prefix.as_str()),
            };
            let Some(matched) = matched else { continue };
            if !entry.methods.is_empty() && !entry.methods.contains(method) {
                method_mismatch = true;
                continue;
            }
            return Ok(RouteMatch {
                route: &entry.route,
                matched,
            });
        }
        Err(if method_mismatch {
            NoMatch::MethodNotAllowed
        } else {
            NoMatch::NotFound
        })
    }
}

/// Returns true when `prefix` matches `path` on a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Removes the matched prefix from `path`, keeping a leading `/`.
pub fn strip_prefix(path: &str, matched: &str) -> String {
    let prefix = matched.strip_suffix('/').unwrap_or(matched);
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    if rest.is_empty() {
        "/".to_string()
    } else if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route name, its paths, hosts and methods.
    type Definition = (&'static str, Vec<PathRule>, Vec<&'static str>, Vec<Method>);

    fn router(definitions: Vec<Definition>) -> Router<&'static str> {
        Router::build(
            definitions
                .into_iter()
                .map(|(name, paths, hosts, methods)| RouteDefinition {
                    paths,
                    hosts: hosts.into_iter().map(HostRule::parse).collect(),
                    methods,
                    route: Arc::new(name),
                })
                .collect(),
        )
    }

    fn prefix(path: &str) -> PathRule {
        PathRule::Prefix(path.into())
    }

    fn found(
        router: &Router<&'static str>,
        host: &str,
        path: &str,
        method: Method,
    ) -> Option<&'static str> {
        router.find(host, path, &method).ok().map(|m| **m.route)
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let router = router(vec![("echo", vec![prefix("/echo")], vec![], vec![])]);
        assert_eq!(found(&router, "", "/echo", Method::GET), Some("echo"));
        assert_eq!(found(&router, "", "/echo/a/b", Method::GET), Some("echo"));
        assert_eq!(found(&router, "", "/echoes", Method::GET), None);
        assert_eq!(found(&router, "", "/", Method::GET), None);
    }

    #[test]
    fn longest_prefix_and_exact_win() {
        let router = router(vec![
            ("root", vec![prefix("/")], vec![], vec![]),
            ("api", vec![prefix("/api")], vec![], vec![]),
            ("api-v1", vec![prefix("/api/v1")], vec![], vec![]),
            (
                "health",
                vec![PathRule::Exact("/api/v1/health".into())],
                vec![],
                vec![],
            ),
        ]);
        assert_eq!(found(&router, "", "/other", Method::GET), Some("root"));
        assert_eq!(found(&router, "", "/api/x", Method::GET), Some("api"));
        assert_eq!(found(&router, "", "/api/v1/x", Method::GET), Some("api-v1"));
        assert_eq!(
            found(&router, "", "/api/v1/health", Method::GET),
            Some("health")
        );
        assert_eq!(
            found(&router, "", "/api/v1/health/x", Method::GET),
            Some("api-v1")
        );
    }

    #[test]
    fn host_specific_route_wins() {
        let router = router(vec![
            ("any", vec![prefix("/")], vec![], vec![]),
            ("wild", vec![prefix("/")], vec!["*.example.com"], vec![]),
            ("exact", vec![prefix("/")], vec!["api.example.com"], vec![]),
        ]);
        assert_eq!(
            found(&router, "api.example.com", "/", Method::GET),
            Some("exact")
        );
        assert_eq!(
            found(&router, "www.example.com", "/", Method::GET),
            Some("wild")
        );
        assert_eq!(found(&router, "example.com", "/", Method::GET), Some("any"));
    }

    #[test]
    fn method_mismatch_is_reported() {
        let router = router(vec![(
            "read",
            vec![prefix("/r")],
            vec![],
            vec![Method::GET],
        )]);
        assert_eq!(found(&router, "", "/r", Method::GET), Some("read"));
        assert_eq!(
            router.find("", "/r", &Method::POST).unwrap_err(),
            NoMatch::MethodNotAllowed
        );
        assert_eq!(
            router.find("", "/x", &Method::POST).unwrap_err(),
            NoMatch::NotFound
        );
    }

    #[test]
    fn declaration_order_breaks_ties() {
        let router = router(vec![
            ("first", vec![prefix("/a")], vec![], vec![]),
            ("second", vec![prefix("/a")], vec![], vec![]),
        ]);
        assert_eq!(found(&router, "", "/a", Method::GET), Some("first"));
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        assert_eq!(strip_prefix("/echo", "/echo"), "/");
        assert_eq!(strip_prefix("/echo/a", "/echo"), "/a");
        assert_eq!(strip_prefix("/echo/a", "/echo/"), "/a");
        assert_eq!(strip_prefix("/anything", "/"), "/anything");
    }
}
