//! The monitoring files of `deploy/` against the relay:
//!
//! - `promtool` accepts `deploy/prometheus/prometheus.yml` and `alerts.yml`,
//!   and the alerts' unit tests (`alerts_test.yml`) pass;
//! - every series the alert rules and the Grafana dashboard
//!   (`deploy/grafana/lobby-relay.json`) use, with the label values they
//!   select on, is on a fresh node's `/metrics` before any client came, in
//!   memory mode and in Redis mode (a rule or a panel on a series that does
//!   not exist yet shows nothing, or fires on absence);
//! - every metric `src/metrics.rs` registers is exported from the start.
//!
//! Needs `promtool` (Debian: the `prometheus` package; scripts/test.sh
//! installs it). A missing `promtool` fails the test.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{Node, RedisServer};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------

/// Runs `promtool ARGS` in `dir` and fails the test, with promtool's output,
/// unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) {
    let program = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let output = match Command::new(&program).args(args).current_dir(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not on PATH: the monitoring tests check deploy/prometheus/ with it. \
             Run scripts/test.sh, which installs it (Debian package `prometheus`), or \
             `apt-get install -y prometheus` (PROMTOOL=/path/to/promtool picks another one)."
        ),
        Err(e) => panic!("cannot run `{program}`: {e}"),
    };
    assert!(
        output.status.success(),
        "`promtool {}` (in {}) failed: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn promtool_accepts_the_prometheus_config_and_the_alert_rules_and_their_tests() {
    let root = root();
    promtool(
        &root,
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    promtool(&root, &["check", "rules", "deploy/prometheus/alerts.yml"]);
    promtool(
        &root.join("deploy/prometheus"),
        &["test", "rules", "alerts_test.yml"],
    );
}

// ---------------------------------------------------------------------------
// What a node exports, and what the rules and the dashboard use
// ---------------------------------------------------------------------------

/// The series of a `/metrics` text: metric name -> the label sets of its
/// sample lines.
type Exported = BTreeMap<String, Vec<BTreeMap<String, String>>>;

/// Parses the Prometheus text format (comments skipped; label values
/// unescaped).
fn parse_exposition(text: &str) -> Exported {
    let mut exported = Exported::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        let mut labels = BTreeMap::new();
        if line[end..].starts_with('{') {
            let mut chars = line[end + 1..].chars();
            loop {
                let label: String = chars
                    .by_ref()
                    .take_while(|c| *c != '=')
                    .collect::<String>()
                    .trim_matches([',', ' '])
                    .to_owned();
                if label.is_empty() || label.starts_with('}') {
                    break;
                }
                assert_eq!(chars.next(), Some('"'), "a quoted value in {line:?}");
                let mut value = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some(other) => value.push(other),
                            None => break,
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(label, value);
                // Past the separator: `,` to the next label, or `}`.
                let rest = chars.as_str().trim_start();
                if rest.starts_with('}') {
                    break;
                }
            }
        }
        exported.entry(name.to_owned()).or_default().push(labels);
    }
    exported
}

/// What a PromQL expression uses of the relay's series: each
/// `lobby_relay_*` metric name, and each equality matcher `label="value"`
/// inside such a metric's `{...}` selector (not `!=`, `=~`, `!~`, and not
/// `job` or `instance`, which Prometheus adds): (metric, label, value).
/// `up` and the other series of Prometheus itself are not the relay's.
#[derive(Debug, Default, PartialEq, Eq)]
struct Uses {
    names: BTreeSet<String>,
    matchers: BTreeSet<(String, String, String)>,
}

fn uses(expr: &str) -> Uses {
    const PREFIX: &str = "lobby_relay_";
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = Uses::default();
    let mut at = 0;
    while let Some(offset) = expr[at..].find(PREFIX) {
        let start = at + offset;
        at = start + PREFIX.len();
        if expr[..start].chars().next_back().is_some_and(ident) {
            continue; // inside another name
        }
        let len = expr[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(expr.len() - start);
        let name = &expr[start..start + len];
        at = start + len;
        found.names.insert(name.to_owned());
        let rest = expr[at..].trim_start();
        let Some(selector) = rest.strip_prefix('{') else {
            continue;
        };
        let close = selector
            .find('}')
            .unwrap_or_else(|| panic!("an unclosed selector after {name} in {expr:?}"));
        for matcher in split_matchers(&selector[..close]) {
            let Some((label, value)) = matcher.split_once('=') else {
                panic!("not a label matcher: {matcher:?} in {expr:?}");
            };
            let label = label.trim();
            if label.ends_with('!') || value.starts_with('~') {
                continue; // !=, !~, =~
            }
            if label == "job" || label == "instance" {
                continue;
            }
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or_else(|| panic!("an unquoted value: {matcher:?} in {expr:?}"));
            found
                .matchers
                .insert((name.to_owned(), label.to_owned(), unquoted.to_owned()));
        }
    }
    found
}

/// The matchers of a selector's inside, split at the commas outside quotes.
fn split_matchers(inside: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, c) in inside.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open && !inside[..i].ends_with('\\') => quote = None,
            (',', None) => {
                parts.push(inside[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(inside[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// What `expr` uses that `exported` lacks: metric names without a sample
/// line, and matchers no sample line of their metric satisfies.
fn missing(expr: &str, exported: &Exported) -> Vec<String> {
    let used = uses(expr);
    let mut gaps = Vec::new();
    for name in &used.names {
        if !exported.contains_key(name) {
            gaps.push(format!("{name} (no such series)"));
        }
    }
    for (name, label, value) in &used.matchers {
        let Some(series) = exported.get(name) else {
            continue; // reported above
        };
        if !series.iter().any(|labels| labels.get(label) == Some(value)) {
            gaps.push(format!(
                "{name}{{{label}=\"{value}\"}} (no series with that label value)"
            ));
        }
    }
    gaps
}

/// The `expr` of every alert rule of `alerts.yml`. The file is read line by
/// line (an `expr:` on one line, or a block scalar `expr: |` below it); the
/// count is checked against the alerts, so that none is skipped.
fn alert_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        } else if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                let indent = line.len() - trimmed.len();
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                exprs.push((alert.clone(), block.join(" ")));
            } else {
                exprs.push((alert.clone(), value.to_owned()));
            }
        }
        i += 1;
    }
    let alerts = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(alerts > 0, "no alert in alerts.yml");
    assert_eq!(
        exprs.len(),
        alerts,
        "one expr per alert in alerts.yml: {exprs:?}"
    );
    exprs
}

/// Every query of the dashboard: each target's `expr` of every panel (rows'
/// panels too, at any depth), and the template variables' queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("panel {title:?}"), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    assert!(!exprs.is_empty(), "no panel with a query in the dashboard");
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        for query in [
            &variable["query"],
            &variable["query"]["query"],
            &variable["definition"],
        ] {
            if let Some(query) = query.as_str() {
                exprs.push((format!("variable {name:?}"), query.to_owned()));
            }
        }
    }
    exprs
}

/// The metric names `src/metrics.rs` registers: its string literals
/// `"lobby_relay_..."`.
fn registered_names() -> BTreeSet<String> {
    let source = read("src/metrics.rs");
    let mut names = BTreeSet::new();
    for (i, _) in source.match_indices("\"lobby_relay_") {
        let rest = &source[i + 1..];
        let end = rest.find('"').expect("a closed string literal");
        let name = &rest[..end];
        if name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Checks a fresh node's scrape against the rules, the dashboard and
/// `src/metrics.rs`; returns the gaps found, each naming what uses it.
fn gaps_of(exported: &Exported) -> Vec<String> {
    let mut gaps = Vec::new();
    let rules = alert_exprs(&read("deploy/prometheus/alerts.yml"));
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/lobby-relay.json")).expect("dashboard JSON");
    let mut checked = 0;
    for (source, (what, expr)) in rules.into_iter().map(|e| ("alerts.yml", e)).chain(
        dashboard_exprs(&dashboard)
            .into_iter()
            .map(|e| ("dashboard", e)),
    ) {
        checked += uses(&expr).names.len();
        for gap in missing(&expr, exported) {
            gaps.push(format!("{source}, {what}: {gap}"));
        }
    }
    assert!(
        checked > 20,
        "only {checked} uses of the relay's series found"
    );
    // Everything registered is exported (a histogram as its _bucket, _sum
    // and _count series).
    let registered = registered_names();
    assert!(
        registered.len() > 20,
        "only {registered:?} in src/metrics.rs"
    );
    for name in registered {
        let as_histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .all(|suffix| exported.contains_key(&format!("{name}{suffix}")));
        if !exported.contains_key(&name) && !as_histogram {
            gaps.push(format!("src/metrics.rs: {name} (registered, not exported)"));
        }
    }
    gaps
}

#[test]
fn a_fresh_node_exports_every_series_the_alerts_and_the_dashboard_use() {
    let memory = Node::start("fresh-memory", &[]);
    let redis = RedisServer::start();
    let url = redis.url();
    let on_redis = Node::start("fresh-redis", &["--redis-url", &url]);
    for (mode, node) in [("memory", &memory), ("redis", &on_redis)] {
        // Before any client: nothing has been counted yet.
        let text = support::scrape_metrics(node.addr());
        let exported = parse_exposition(&text);
        let gaps = gaps_of(&exported);
        assert!(
            gaps.is_empty(),
            "a fresh node ({mode} mode) does not export what the rules and the dashboard use:\n  {}\n\nits /metrics:\n{text}",
            gaps.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// The check itself: it must find what is not there
// ---------------------------------------------------------------------------

const SAMPLE_EXPOSITION: &str = r#"# TYPE lobby_relay_joins_total counter
lobby_relay_joins_total{result="joined"} 0
lobby_relay_joins_total{result="lobby_full"} 3
# TYPE lobby_relay_connections gauge
lobby_relay_connections 0
lobby_relay_redis_command_seconds_bucket{op="publish",le="0.001"} 0
lobby_relay_redis_command_seconds_bucket{op="publish",le="+Inf"} 0
lobby_relay_redis_command_seconds_sum{op="publish"} 0
lobby_relay_redis_command_seconds_count{op="publish"} 0
lobby_relay_node_info{version="0.1.0",node_id="a \"quoted\", b",store="memory"} 1
"#;

#[test]
fn the_series_check_reports_a_made_up_metric_or_label_value() {
    let exported = parse_exposition(SAMPLE_EXPOSITION);
    assert_eq!(
        exported["lobby_relay_node_info"][0]["node_id"],
        r#"a "quoted", b"#
    );
    assert_eq!(exported["lobby_relay_joins_total"].len(), 2);
    // A name that is not exported is reported.
    assert_eq!(
        missing("rate(lobby_relay_no_such_thing_total[5m])", &exported),
        vec!["lobby_relay_no_such_thing_total (no such series)".to_owned()]
    );
    // So is a label value no series has, and a histogram's base name.
    assert_eq!(
        missing(
            r#"sum(rate(lobby_relay_joins_total{job="lobby-relay", result="no_such_result"}[5m]))"#,
            &exported
        ),
        vec![
            r#"lobby_relay_joins_total{result="no_such_result"} (no series with that label value)"#
                .to_owned()
        ]
    );
    assert_eq!(
        missing(
            r#"histogram_quantile(0.99, rate(lobby_relay_redis_command_seconds{op="publish"}[5m]))"#,
            &exported
        ),
        vec!["lobby_relay_redis_command_seconds (no such series)".to_owned()]
    );
    assert_eq!(
        missing(
            r#"rate(lobby_relay_redis_command_seconds_bucket{op="join"}[5m])"#,
            &exported
        ),
        vec![r#"lobby_relay_redis_command_seconds_bucket{op="join"} (no series with that label value)"#.to_owned()]
    );
    // What is there passes; `up`, job, instance, !=, =~ and template
    // variables are not the relay's to export.
    for fine in [
        r#"sum(up{job="lobby-relay"})"#,
        r#"lobby_relay_connections{job="lobby-relay", instance=~"$instance"}"#,
        r#"sum(rate(lobby_relay_joins_total{job="lobby-relay", result!="joined"}[10m])) / sum(rate(lobby_relay_joins_total{result="lobby_full"}[10m]))"#,
        r#"histogram_quantile(0.99, sum by (le) (rate(lobby_relay_redis_command_seconds_bucket{op="publish", le=~".+"}[5m])))"#,
        r#"label_values(lobby_relay_node_info{job="lobby-relay"}, instance)"#,
    ] {
        assert_eq!(missing(fine, &exported), Vec::<String>::new(), "{fine}");
    }
    // Names inside other names are not the relay's.
    assert_eq!(uses("my_lobby_relay_thing + 1"), Uses::default());
    // The rules and the dashboard are found at all (their checks would pass
    // on nothing otherwise): with nothing exported, everything is missing.
    let none = Exported::new();
    let gaps = gaps_of(&none);
    for expected in [
        "alerts.yml, LobbyRelayRedisSlow: lobby_relay_redis_command_seconds_bucket (no such series)",
        "dashboard, panel \"Connections\": lobby_relay_connections (no such series)",
        "dashboard, variable \"instance\": lobby_relay_node_info (no such series)",
        "src/metrics.rs: lobby_relay_resumes_total (registered, not exported)",
        "src/metrics.rs: lobby_relay_redis_command_seconds (registered, not exported)",
    ] {
        assert!(
            gaps.iter().any(|g| g == expected),
            "{expected:?} not among {gaps:#?}"
        );
    }
}
