//! The JSON form of a scoring request, as `grm judge prompt`, `grm score` and `grm label` read
//! it. Field names follow `proto/grm/v1/reward.proto`; `query` is a shorthand for a
//! one-turn conversation.

use anyhow::{bail, Context, Result};
use grm_judge::{JudgeInput, Label, Message, Role};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestJson {
    #[serde(default)]
    pub id: Option<String>,
    /// Shorthand for `conversation: [{"role": "user", "content": query}]`.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub conversation: Vec<Message>,
    pub responses: Vec<String>,
    #[serde(default)]
    pub criteria: Vec<String>,
    #[serde(default)]
    pub sampling: SamplingJson,
    #[serde(default)]
    pub label: Option<Label>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingJson {
    pub k: Option<u32>,
    pub k_meta: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_new_tokens: Option<u32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub no_shuffle: bool,
}

impl RequestJson {
    pub fn parse(text: &str) -> Result<Self> {
        serde_json::from_str(text).context("the request is not valid JSON of the expected shape")
    }

    /// The method's view of the request, checked.
    pub fn judge_input(&self) -> Result<JudgeInput> {
        let conversation = match (&self.query, self.conversation.is_empty()) {
            (Some(_), false) => bail!("give either `query` or `conversation`, not both"),
            (Some(q), true) => vec![Message {
                role: Role::User,
                content: q.clone(),
            }],
            (None, _) => self.conversation.clone(),
        };
        let input = JudgeInput {
            conversation,
            responses: self.responses.clone(),
            criteria: self.criteria.clone(),
        };
        input.validate()?;
        if let Some(label) = &self.label {
            label.validate(input.responses.len())?;
        }
        Ok(input)
    }
}

impl RequestJson {
    /// The request as the public API takes it (checked first, so errors name JSON fields).
    pub fn to_proto(&self) -> Result<grm_proto::v1::ScoreRequest> {
        use grm_proto::v1 as pb;
        let input = self.judge_input()?;
        let s = &self.sampling;
        Ok(pb::ScoreRequest {
            id: self.id.clone().unwrap_or_default(),
            conversation: input
                .conversation
                .iter()
                .map(|m| pb::Message {
                    role: m.role.as_str().into(),
                    content: m.content.clone(),
                })
                .collect(),
            responses: input.responses,
            criteria: input.criteria,
            sampling: Some(pb::Sampling {
                k: s.k.unwrap_or(1),
                k_meta: s.k_meta,
                temperature: s.temperature,
                top_p: s.top_p,
                max_new_tokens: s.max_new_tokens.unwrap_or(0),
                seed: s.seed,
                no_shuffle: s.no_shuffle,
                adaptive: None,
            }),
            label: self.label.map(|l| pb::Label {
                kind: Some(match l {
                    Label::Best(b) => pb::label::Kind::Best(b as u32),
                    Label::Rating(r) => pb::label::Kind::Rating(u32::from(r)),
                    Label::Correct(c) => pb::label::Kind::Correct(c),
                }),
            }),
            return_samples: true,
            model: String::new(),
            hinted: false,
            group: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_shorthand_and_conversation() {
        let r = RequestJson::parse(r#"{"query": "q", "responses": ["a", "b"]}"#).unwrap();
        assert_eq!(r.judge_input().unwrap().conversation.len(), 1);
        let r = RequestJson::parse(
            r#"{"conversation": [{"role": "user", "content": "q"}], "responses": ["a"], "label": {"rating": 7}}"#,
        )
        .unwrap();
        assert_eq!(r.label, Some(Label::Rating(7)));
        assert!(r.judge_input().is_ok());
    }

    #[test]
    fn bad_requests_say_why() {
        let e = RequestJson::parse(r#"{"query": "q", "responses": []}"#)
            .unwrap()
            .judge_input()
            .unwrap_err();
        assert!(e.to_string().contains("responses is empty"), "{e}");
        let e =
            RequestJson::parse(r#"{"query": "q", "responses": ["a"], "colour": 1}"#).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `colour`"), "{e:#}");
        let e =
            RequestJson::parse(r#"{"query": "q", "responses": ["a", "b"], "label": {"best": 2}}"#)
                .unwrap()
                .judge_input()
                .unwrap_err();
        assert!(e.to_string().contains("label.best is 2"), "{e}");
    }
}
