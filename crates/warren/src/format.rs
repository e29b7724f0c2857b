//! `--format`: one line of text per item, its fields picked out of the item's JSON (the
//! object `--json` prints), in the spirit of docker's Go templates.
//!
//! `{{.id}}` is a field, `{{.resources.memory}}` a field of a field, `{{.}}` the whole
//! item, and `{{json .labels}}` a field as JSON. Strings print as they are (control
//! characters replaced: names and labels are the tenant's), numbers and booleans as
//! written, objects and arrays as JSON, and a field that is absent or null as nothing.
//! `\t` and `\n` in the text are a tab and a newline. Nothing else of Go's templates is
//! understood (no `table`, functions or pipes): anything else between `{{` and `}}` is a
//! usage error.

use serde_json::Value;

use crate::client::ClientError as Error;

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field { path: Vec<String>, json: bool },
}

impl Format {
    pub fn parse(template: &str) -> Result<Self, Error> {
        let bad = |why: String| Error::Invalid(format!("--format {template:?}: {why}"));
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            pieces.push(Piece::Text(unescape(&rest[..start])));
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| bad("a `{{` is not closed by `}}`".into()))?;
            let action = after[..end].trim();
            let (json, path) = match action.strip_prefix("json ") {
                Some(p) => (true, p.trim()),
                None => (false, action),
            };
            let path = field_path(path).ok_or_else(|| {
                bad(format!(
                    "{{{{{action}}}}} is not understood; write {{{{.field}}}}, \
                     {{{{.field.inner}}}}, {{{{.}}}} or {{{{json .field}}}}"
                ))
            })?;
            pieces.push(Piece::Field { path, json });
            rest = &after[end + 2..];
        }
        pieces.push(Piece::Text(unescape(rest)));
        pieces.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
        Ok(Self(pieces))
    }

    /// The line for one item, with its newline.
    pub fn render(&self, item: &Value) -> String {
        let mut line = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => line.push_str(t),
                Piece::Field { path, json } => {
                    let v = path.iter().try_fold(item, |v, key| lookup(v, key));
                    match (v, json) {
                        (None, false) | (Some(Value::Null), false) => {}
                        (None, true) => line.push_str("null"),
                        (Some(Value::String(s)), false) => {
                            line.push_str(&crate::term::clean_line(s))
                        }
                        (Some(v), _) => line.push_str(&crate::term::clean_line(&v.to_string())),
                    }
                }
            }
        }
        line.push('\n');
        line
    }

    /// One line per item of `list`.
    pub fn render_all(&self, list: &[Value]) -> String {
        list.iter().map(|v| self.render(v)).collect()
    }
}

/// `.` → no keys; `.a.b` → `[a, b]`; anything else → `None`.
fn field_path(s: &str) -> Option<Vec<String>> {
    if s == "." {
        return Some(Vec::new());
    }
    let rest = s.strip_prefix('.')?;
    let keys: Vec<String> = rest.split('.').map(str::to_string).collect();
    let ok = keys.iter().all(|k| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    ok.then_some(keys)
}

/// A key of an object, or an index of an array.
fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\t", "\t").replace("\\n", "\n")
}

/// The `--format` flag, for the verbs that list or show things.
pub fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).map_err(|e| match e {
        Error::Invalid(m) => m.trim_start_matches("--format ").to_string(),
        e => e.to_string(),
    })
}

/// How a listing prints: a table (the default), its first column alone, JSON, or a
/// `--format` template. Flattened into each verb that lists.
#[derive(Debug, Clone, clap::Args)]
pub struct ListOutput {
    /// Print the first column only (ids, names, owners).
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the list as JSON, every field the daemon gives.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
    /// Print one line per item from a template of its JSON fields, e.g.
    /// '{{.id}}\t{{.name}}' (see README, "--format").
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_format, conflicts_with_all = ["quiet", "json"])]
    pub format: Option<Format>,
}

impl ListOutput {
    /// Prints `list`, as the daemon sent it: `--json` and `--format` keep fields this
    /// CLI does not know yet; otherwise each item is read as a `T`, and printed by
    /// `first` (`--quiet`) or as `table`.
    pub fn print<T: serde::de::DeserializeOwned>(
        &self,
        list: Vec<Value>,
        first: impl Fn(&T) -> String,
        table: impl FnOnce(&[T]) -> String,
    ) -> anyhow::Result<()> {
        if let Some(f) = &self.format {
            return Ok(crate::client::out(f.render_all(&list))?);
        }
        if self.json {
            let text = format!("{}\n", serde_json::to_string_pretty(&list)?);
            return Ok(crate::client::out(text)?);
        }
        let items = list
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<Vec<T>, _>>()?;
        let text = if self.quiet {
            items.iter().map(|i| format!("{}\n", first(i))).collect()
        } else {
            table(&items)
        };
        Ok(crate::client::out(text)?)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_nested_fields_and_json() {
        let item = json!({
            "id": "abc", "name": null, "state": "running",
            "resources": {"memory": 1024, "cpu_millis": null},
            "labels": {"team": "ml"}, "publish": [{"host": 20000, "sandbox": 80}],
            "auto_resume": false,
        });
        let f = |t: &str| Format::parse(t).unwrap().render(&item);
        assert_eq!(f("{{.id}}"), "abc\n");
        assert_eq!(f("{{ .id }}\\t{{.state}}"), "abc\trunning\n");
        assert_eq!(
            f("{{.resources.memory}} {{.resources.cpu_millis}}|"),
            "1024 |\n"
        );
        assert_eq!(f("{{.name}}|{{.nosuch}}|{{.id.deeper}}"), "||\n");
        assert_eq!(
            f("{{.labels.team}} {{json .labels}}"),
            "ml {\"team\":\"ml\"}\n"
        );
        assert_eq!(f("{{.publish.0.host}}"), "20000\n");
        assert_eq!(f("{{.auto_resume}}"), "false\n");
        assert_eq!(f("{{json .name}} {{json .nosuch}}"), "null null\n");
        assert_eq!(f("plain"), "plain\n");
        assert!(f("{{.}}").starts_with('{'));
    }

    #[test]
    fn strings_cannot_reach_the_terminal_raw() {
        let item = json!({"name": "evil\u{1b}]0;title\u{7}\nnext"});
        let line = Format::parse("{{.name}}").unwrap().render(&item);
        assert!(
            !line.contains('\u{1b}') && line.matches('\n').count() == 1,
            "{line:?}"
        );
    }

    #[test]
    fn what_is_not_understood_is_a_usage_error() {
        for bad in [
            "{{.id",
            "{{id}}",
            "{{.a..b}}",
            "{{range .x}}",
            "{{.a | upper}}",
            "{{}}",
        ] {
            match Format::parse(bad) {
                Err(Error::Invalid(m)) => assert!(m.contains("--format"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(parse_format("{{x}}").unwrap_err().contains("{{.field}}"));
    }
}
