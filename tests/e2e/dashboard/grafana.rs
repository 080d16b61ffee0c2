//! The dashboard's JSON read as Grafana reads it: its panels, their queries and its template
//! variables, with the variables substituted as Grafana would for "All", so that Prometheus can
//! run each query as it stands.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// The dashboard as shipped.
const JSON: &str = include_str!("../../../docs/dashboards/hawser.json");
/// The lowest schema version the dashboard may declare (Grafana 10.4 and later write 39).
const MIN_SCHEMA_VERSION: u64 = 39;
/// Every panel and variable names its data source through this variable.
const DATASOURCE: &str = "${datasource}";
/// Grafana's own variables, as it would set them for a one-minute rate window with a scrape
/// every second (the test runs in well under a minute, so the window holds all its load).
const BUILT_INS: &[(&str, &str)] = &[("__rate_interval", "1m"), ("__interval", "15s"), ("__range", "5m")];

/// The dashboard, checked for the shape Grafana needs.
pub struct Dashboard {
    json: Value,
    /// (a variable's name, its value: for a query variable, its "All").
    substitutions: Vec<(String, String)>,
}

/// One target of one panel.
pub struct Query {
    /// The panel's id.
    pub panel_id: u64,
    /// The panel's title.
    pub panel: String,
    /// The target's `refId`.
    pub ref_id: String,
    /// The query with every variable substituted.
    pub promql: String,
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "panel {} {:?}, target {}: {}",
            self.panel_id, self.panel, self.ref_id, self.promql
        )
    }
}

/// A query variable, as a query that returns a series for each of its values.
pub struct Variable {
    /// Its name (`$name` in queries).
    pub name: String,
    /// The label whose values it offers.
    pub label: String,
    /// `count by (label) (selector)`, the selector's variables substituted.
    pub promql: String,
}

impl Dashboard {
    /// Reads the dashboard and checks its schema version, its data source variable, and that
    /// every query variable offers "All".
    pub fn load() -> Result<Self> {
        let json: Value = serde_json::from_str(JSON).context("docs/dashboards/hawser.json is not JSON")?;
        let version = json["schemaVersion"].as_u64().unwrap_or(0);
        ensure!(
            version >= MIN_SCHEMA_VERSION,
            "schemaVersion {version}, below {MIN_SCHEMA_VERSION}"
        );
        let variables = json["templating"]["list"].as_array().context("no templating list")?;
        ensure!(
            variables
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
            "no `datasource` variable of type datasource for prometheus"
        );
        let mut substitutions = BUILT_INS
            .iter()
            .map(|&(name, value)| (name.to_owned(), value.to_owned()))
            .collect::<Vec<_>>();
        for variable in variables.iter().filter(|v| v["type"] == "query") {
            let name = text(variable, "name")?;
            ensure!(
                variable["datasource"]["uid"] == DATASOURCE,
                "variable ${name} does not query {DATASOURCE}"
            );
            ensure!(
                variable["includeAll"] == true && variable["multi"] == true,
                "variable ${name} offers no \"All\" or not several values"
            );
            let all = text(variable, "allValue").with_context(|| format!("variable ${name}"))?;
            substitutions.push((name.to_owned(), all.to_owned()));
        }
        Ok(Self { json, substitutions })
    }

    /// Every target of every panel (rows hold none; a collapsed row's panels are included).
    /// Fails on a panel without targets, a duplicate id, a panel off the 24-column grid, a
    /// panel or target not on `${datasource}`, and a query with a variable the dashboard lacks.
    pub fn queries(&self) -> Result<Vec<Query>> {
        let mut panels: Vec<&Value> = Vec::new();
        for panel in self.json["panels"].as_array().context("no panels")? {
            panels.push(panel);
            panels.extend(panel["panels"].as_array().into_iter().flatten());
        }
        let mut ids = BTreeSet::new();
        let mut queries = Vec::new();
        for panel in panels {
            let id = panel["id"].as_u64().context("a panel without an id")?;
            let title = text(panel, "title").with_context(|| format!("panel {id}"))?;
            ensure!(ids.insert(id), "two panels have id {id}");
            let grid = |key: &str| panel["gridPos"][key].as_u64();
            let (Some(_), Some(w), Some(x), Some(_)) = (grid("h"), grid("w"), grid("x"), grid("y")) else {
                bail!("panel {id} {title:?} has no full gridPos");
            };
            ensure!(x + w <= 24, "panel {id} {title:?} is off the 24-column grid");
            let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
            if panel["type"] == "row" {
                ensure!(targets.is_empty(), "row {id} {title:?} has targets");
                continue;
            }
            ensure!(!targets.is_empty(), "panel {id} {title:?} has no targets");
            let mut refs = BTreeSet::new();
            for target in std::iter::once(panel).chain(targets) {
                ensure!(
                    target["datasource"]["uid"] == DATASOURCE,
                    "panel {id} {title:?}: a data source other than {DATASOURCE}"
                );
            }
            for target in targets {
                let ref_id = text(target, "refId").with_context(|| format!("panel {id} {title:?}"))?;
                ensure!(refs.insert(ref_id), "panel {id} {title:?} has two targets {ref_id}");
                let expr = text(target, "expr").with_context(|| format!("panel {id} {title:?}"))?;
                queries.push(Query {
                    panel_id: id,
                    panel: title.to_owned(),
                    ref_id: ref_id.to_owned(),
                    promql: self
                        .substitute(expr)
                        .with_context(|| format!("panel {id} {title:?}, target {ref_id}"))?,
                });
            }
        }
        Ok(queries)
    }

    /// The query of `panel`'s target `ref_id`.
    pub fn query(&self, panel: u64, ref_id: &str) -> Result<Query> {
        self.queries()?
            .into_iter()
            .find(|q| q.panel_id == panel && q.ref_id == ref_id)
            .with_context(|| format!("the dashboard has no panel {panel} with a target {ref_id}"))
    }

    /// Every query variable, from its `label_values(selector, label)`.
    pub fn variables(&self) -> Result<Vec<Variable>> {
        let list = self.json["templating"]["list"].as_array().into_iter().flatten();
        list.filter(|v| v["type"] == "query")
            .map(|variable| {
                let name = text(variable, "name")?;
                let query = text(variable, "query")?;
                let (selector, label) = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.strip_suffix(')'))
                    .and_then(|q| q.rsplit_once(','))
                    .with_context(|| format!("variable ${name}: {query:?} is not label_values(selector, label)"))?;
                let label = label.trim().to_owned();
                Ok(Variable {
                    name: name.to_owned(),
                    promql: self
                        .substitute(&format!("count by ({label}) ({})", selector.trim()))
                        .with_context(|| format!("variable ${name}"))?,
                    label,
                })
            })
            .collect()
    }

    /// `expr` with every variable (`$name` or `${name}`) replaced; fails on a variable the
    /// dashboard does not define.
    fn substitute(&self, expr: &str) -> Result<String> {
        let mut promql = String::new();
        let mut rest = expr;
        while let Some(at) = rest.find('$') {
            promql.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, len) = match after.strip_prefix('{') {
                Some(braced) => {
                    let end = braced.find('}').with_context(|| format!("{expr:?}: an unclosed ${{"))?;
                    (&braced[..end], end + 2)
                }
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], end)
                }
            };
            let value = self
                .substitutions
                .iter()
                .find(|(known, _)| known == name)
                .with_context(|| format!("{expr:?} uses ${name}, which the dashboard does not define"))?;
            promql.push_str(&value.1);
            rest = &after[len..];
        }
        promql.push_str(rest);
        Ok(promql)
    }
}

/// The string at `key` of `value`.
fn text<'a>(value: &'a Value, key: &str) -> Result<&'a str> {
    value[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .with_context(|| format!("no {key}"))
}
