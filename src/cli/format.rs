//! `--format` of the listing commands: `table` (the default), `json`, or a template in the
//! style of docker's Go templates, `'{{.Repository}}:{{.Tag}} {{.ID}}'`, printed once per
//! row. Only `{{.Field}}` substitutions of the field names docker documents for the command
//! are understood (plus `\t` and `\n` in the text); anything else is refused with one line
//! naming it, rather than printed wrong.

use std::str::FromStr;

/// How a listing command prints its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Template(Template),
}

impl FromStr for Format {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            _ => Template::parse(s).map(Format::Template),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("--format: {{{{ at byte {0} is never closed with }}}}")]
    Unclosed(usize),
    #[error(
        "--format: {{{{{0}}}}} is not supported: only {{{{.Field}}}} substitutions (or table, json)"
    )]
    Unsupported(String),
    #[error("--format: no field .{field} (known: {known})")]
    UnknownField { field: String, known: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

fn unescape(text: &str) -> String {
    text.replace("\\t", "\t").replace("\\n", "\n")
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(unescape(&rest[..open])));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or(TemplateError::Unclosed(s.len() - rest.len() + open))?;
            let action = after[..close].trim();
            let field = action
                .strip_prefix('.')
                .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric()))
                .ok_or_else(|| TemplateError::Unsupported(action.to_string()))?;
            parts.push(Part::Field(field.to_string()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(unescape(rest)));
        }
        Ok(Template { parts })
    }

    /// Fails on the first field not in `known`, naming it and the known ones.
    pub fn check(&self, known: &[&str]) -> Result<(), TemplateError> {
        for p in &self.parts {
            if let Part::Field(f) = p {
                if !known.contains(&f.as_str()) {
                    return Err(TemplateError::UnknownField {
                        field: f.clone(),
                        known: known
                            .iter()
                            .map(|k| format!(".{k}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                    });
                }
            }
        }
        Ok(())
    }

    /// The template with each field replaced by `value(field)`.
    pub fn render(&self, value: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(&value(f)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(f: &str) -> String {
        match f {
            "Repository" => "busybox".into(),
            "Tag" => "latest".into(),
            "ID" => "0123456789ab".into(),
            _ => unreachable!("checked"),
        }
    }

    #[test]
    fn substitutes_fields_and_keeps_text() {
        let t = Template::parse("{{.Repository}}:{{ .Tag }} {{.ID}}").unwrap();
        t.check(&["ID", "Repository", "Tag"]).unwrap();
        assert_eq!(t.render(fields), "busybox:latest 0123456789ab");
        let t = Template::parse("id={{.ID}}\\t[{{.Tag}}]\\n").unwrap();
        assert_eq!(t.render(fields), "id=0123456789ab\t[latest]\n");
        let t = Template::parse("plain").unwrap();
        assert_eq!(t.render(fields), "plain");
    }

    #[test]
    fn table_and_json_are_keywords() {
        assert_eq!("table".parse::<Format>(), Ok(Format::Table));
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!(matches!(
            "{{.ID}}".parse::<Format>(),
            Ok(Format::Template(_))
        ));
    }

    #[test]
    fn unknown_field_is_named() {
        let t = Template::parse("{{.ID}} {{.Nope}}").unwrap();
        let e = t.check(&["ID", "Tag"]).unwrap_err().to_string();
        assert_eq!(e, "--format: no field .Nope (known: .ID .Tag)");
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert_eq!(
            Template::parse("a {{.ID").unwrap_err(),
            TemplateError::Unclosed(2)
        );
        let e = Template::parse("{{json .}}").unwrap_err();
        assert_eq!(e, TemplateError::Unsupported("json .".into()));
        assert!(e.to_string().contains("{{json .}} is not supported"), "{e}");
        assert!(Template::parse("{{.}}").is_err());
        assert!(Template::parse("{{.A.B}}").is_err());
    }
}
