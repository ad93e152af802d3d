//! Prompt templates as data: a TOML file whose fields hold text with `{{name}}` placeholders.
//!
//! The paper's template ships as `templates/deepseek-grm.toml` and is compiled in as the
//! default; an operator's replacement is parsed by [`Template::from_toml`] and checked field
//! by field when it is loaded, so rendering itself cannot fail.

use crate::marked::Marked;
use serde::Deserialize;
use thiserror::Error;

/// The paper's template (DeepSeek-GRM default), as shipped.
pub const DEFAULT_TEMPLATE_TOML: &str = include_str!("../templates/deepseek-grm.toml");

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template is not valid TOML or lacks a field: {0}")]
    Toml(String),
    #[error(
        "template field `{field}` uses unknown placeholder {{{{{name}}}}} (allowed: {allowed})"
    )]
    UnknownPlaceholder {
        field: &'static str,
        name: String,
        allowed: String,
    },
    #[error("template field `{field}` must contain the placeholder {{{{{name}}}}}")]
    MissingPlaceholder {
        field: &'static str,
        name: &'static str,
    },
    #[error("template field `criteria` is empty: give at least one default criterion")]
    NoCriteria,
}

/// A GRM prompt template: see the shipped TOML file for what each field means.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub prompt: String,
    pub criteria: Vec<String>,
    pub criterion: String,
    pub criteria_separator: String,
    pub turn: String,
    pub turn_separator: String,
    pub role_system: String,
    pub role_user: String,
    pub role_assistant: String,
    pub response: String,
    pub response_single: String,
    pub response_separator: String,
    pub scores_format: String,
    pub scores_format_single: String,
    pub hint: String,
    pub chat: String,
    pub meta: String,
}

/// (field, allowed placeholders, required placeholders)
type FieldRule = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

const RULES: &[FieldRule] = &[
    (
        "prompt",
        &["criteria", "conversation", "responses", "scores_format"],
        &["conversation", "responses", "scores_format"],
    ),
    ("criterion", &["index", "criterion"], &["criterion"]),
    ("turn", &["role", "content"], &["content"]),
    ("response", &["index", "response"], &["index", "response"]),
    ("response_single", &["response"], &["response"]),
    ("scores_format", &["example", "n"], &[]),
    ("scores_format_single", &["example"], &[]),
    ("hint", &["best"], &["best"]),
    ("chat", &["prompt"], &["prompt"]),
    (
        "meta",
        &["conversation", "responses", "judgement"],
        &["conversation", "responses", "judgement"],
    ),
];

impl Default for Template {
    fn default() -> Self {
        // The shipped file is checked by a test; failing here would be a build defect.
        Self::from_toml(DEFAULT_TEMPLATE_TOML).expect("the shipped template is valid")
    }
}

impl Template {
    /// Parses and checks a template.
    pub fn from_toml(text: &str) -> Result<Self, TemplateError> {
        let t: Template = toml::from_str(text).map_err(|e| TemplateError::Toml(e.to_string()))?;
        if t.criteria.is_empty() {
            return Err(TemplateError::NoCriteria);
        }
        for &(field, allowed, required) in RULES {
            let text = t.field(field);
            for name in placeholders(text) {
                if !allowed.contains(&name) {
                    return Err(TemplateError::UnknownPlaceholder {
                        field,
                        name: name.to_string(),
                        allowed: allowed.join(", "),
                    });
                }
            }
            for &name in required {
                if !placeholders(text).any(|p| p == name) {
                    return Err(TemplateError::MissingPlaceholder { field, name });
                }
            }
        }
        Ok(t)
    }

    fn field(&self, name: &str) -> &str {
        match name {
            "prompt" => &self.prompt,
            "criterion" => &self.criterion,
            "turn" => &self.turn,
            "response" => &self.response,
            "response_single" => &self.response_single,
            "scores_format" => &self.scores_format,
            "scores_format_single" => &self.scores_format_single,
            "hint" => &self.hint,
            "chat" => &self.chat,
            "meta" => &self.meta,
            _ => "",
        }
    }
}

/// The placeholders `{{name}}` of a text, in order; `name` is ASCII letters, digits and `_`.
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    Segments { rest: text }.filter_map(|s| match s {
        Segment::Placeholder(name) => Some(name),
        Segment::Literal(_) => None,
    })
}

enum Segment<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// Splits a template into literal text and placeholders in one pass. A `{` that does not open
/// a well-formed `{{name}}` is literal, so `\boxed{{{example}}}` reads as `\boxed{` + example +
/// `}`.
struct Segments<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let bytes = self.rest.as_bytes();
        let mut i = 0;
        while i + 1 < bytes.len() {
            if bytes[i] == b'{' && bytes[i + 1] == b'{' {
                let name_start = i + 2;
                let name_len = bytes[name_start..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                let end = name_start + name_len;
                if name_len > 0 && bytes[end..].starts_with(b"}}") {
                    if i > 0 {
                        let lit = &self.rest[..i];
                        self.rest = &self.rest[i..];
                        return Some(Segment::Literal(lit));
                    }
                    let name = &self.rest[name_start..end];
                    self.rest = &self.rest[end + 2..];
                    return Some(Segment::Placeholder(name));
                }
            }
            i += 1;
        }
        let lit = self.rest;
        self.rest = "";
        Some(Segment::Literal(lit))
    }
}

/// [`render`] keeping track of the client's text: the template's literal text is trusted, and
/// each value keeps its own marks.
pub(crate) fn render_marked(text: &str, vars: &[(&str, &Marked)]) -> Marked {
    let mut out = Marked::default();
    for seg in (Segments { rest: text }) {
        match seg {
            Segment::Literal(l) => out.push_trusted(l),
            Segment::Placeholder(name) => {
                if let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// Fills the placeholders of a checked template field. Substituted text is copied verbatim:
/// a response that contains `{{criteria}}` stays as written.
pub(crate) fn render(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len() + vars.iter().map(|v| v.1.len()).sum::<usize>());
    for seg in (Segments { rest: text }) {
        match seg {
            Segment::Literal(l) => out.push_str(l),
            Segment::Placeholder(name) => {
                if let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) {
                    out.push_str(v);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_template_loads() {
        let t = Template::default();
        assert_eq!(t.criteria.len(), 4);
        assert!(t.prompt.starts_with("You are a skilled little expert"));
        assert!(t.criteria[0].starts_with("Instruction Adherence:"));
    }

    #[test]
    fn renders_in_one_pass() {
        let out = render("a {{x}} b {{y}}", &[("x", "{{y}}"), ("y", "Y")]);
        assert_eq!(out, "a {{y}} b Y");
    }

    #[test]
    fn braces_next_to_placeholders_stay_literal() {
        let out = render("\\boxed{{{example}}} {x} {{ y }}", &[("example", "x, x")]);
        assert_eq!(out, "\\boxed{x, x} {x} {{ y }}");
    }

    #[test]
    fn unknown_and_missing_placeholders_are_refused() {
        let bad = DEFAULT_TEMPLATE_TOML.replace("{{best}}", "{{winner}}");
        assert_eq!(
            Template::from_toml(&bad),
            Err(TemplateError::UnknownPlaceholder {
                field: "hint",
                name: "winner".into(),
                allowed: "best".into()
            })
        );
        let bad = DEFAULT_TEMPLATE_TOML.replace("{{prompt}}", "");
        assert_eq!(
            Template::from_toml(&bad),
            Err(TemplateError::MissingPlaceholder {
                field: "chat",
                name: "prompt"
            })
        );
        let err = Template::from_toml("prompt = 1").unwrap_err();
        assert!(matches!(err, TemplateError::Toml(_)), "{err}");
    }
}
