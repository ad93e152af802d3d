//! Optional bearer-token auth on the public API (RewardService and `POST /get_reward`).
//! Health, reflection and metrics stay open: probes and scrapers carry no token.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use tonic::{Request, Status};

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("reading the token file {}: {}", .0.path, .0.source)]
    Read(#[from] ReadSecret),
    #[error("the bearer token in {0} is empty")]
    Empty(String),
}

/// A shared secret. Its `Debug` form never shows it, so it cannot reach a log by accident.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8]>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// The token, surrounding whitespace (a file's trailing newline) removed; `origin` names
    /// where it came from, for the error.
    pub fn new(token: &str, origin: &str) -> Result<Self, AuthError> {
        let t = token.trim();
        if t.is_empty() {
            return Err(AuthError::Empty(origin.to_string()));
        }
        Ok(Self(Arc::from(t.as_bytes())))
    }

    /// The token from `file` when given, else from the environment variable `var`, else none.
    pub fn from_file_or_env(file: Option<&Path>, var: &str) -> Result<Option<Self>, AuthError> {
        match secret_text(file, var)? {
            Some((text, origin)) => Self::new(&text, &origin).map(Some),
            None => Ok(None),
        }
    }

    /// The `authorization` header value a client sends.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.0))
    }

    /// Whether an `authorization` header value carries this token. The comparison takes the
    /// same time wherever the first difference is, so timing does not reveal the token.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(presented) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let expected: &[u8] = &self.0;
        let same_len = presented.len() == expected.len();
        // Compare against the token itself when lengths differ, so the loop's length does not
        // depend on where the presented token ends.
        let other = if same_len { presented } else { expected };
        let diff = expected
            .iter()
            .zip(other)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        same_len & (diff == 0)
    }
}

/// A secret file that could not be read.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct ReadSecret {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// A secret's text and where it came from: the file when given, else the environment variable
/// `var`; none when neither is set.
pub fn secret_text(file: Option<&Path>, var: &str) -> Result<Option<(String, String)>, ReadSecret> {
    match (file, std::env::var(var)) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|source| ReadSecret {
                path: path.display().to_string(),
                source,
            })?;
            Ok(Some((text, path.display().to_string())))
        }
        (None, Ok(t)) => Ok(Some((t, var.to_string()))),
        (None, Err(_)) => Ok(None),
    }
}

/// The public API's tokens, one per caller: `--auth-token-file` holds one a line (blank lines
/// and `#` comments skipped). A caller is known by its token, so each one's groups and group
/// quotas are its own; one token shared by everyone makes everyone one caller.
#[derive(Clone, Debug)]
pub struct CallerTokens(Arc<[BearerToken]>);

impl CallerTokens {
    /// The tokens of `text`, one a line; `origin` names where it came from, for the error.
    pub fn new(text: &str, origin: &str) -> Result<Self, AuthError> {
        let tokens: Vec<BearerToken> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| BearerToken::new(l, origin))
            .collect::<Result<_, _>>()?;
        if tokens.is_empty() {
            return Err(AuthError::Empty(origin.to_string()));
        }
        Ok(Self(tokens.into()))
    }

    /// The tokens from `file` when given, else from the environment variable `var` (one a
    /// line there too), else none.
    pub fn from_file_or_env(file: Option<&Path>, var: &str) -> Result<Option<Self>, AuthError> {
        match secret_text(file, var)? {
            Some((text, origin)) => Self::new(&text, &origin).map(Some),
            None => Ok(None),
        }
    }

    /// How many callers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `bytes` in lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first `n` bytes of the SHA-256 of `bytes`, in hex: a short name for a long text.
pub fn short_digest(bytes: &[u8], n: usize) -> String {
    to_hex(&ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()[..n])
}

/// Something an `authorization` header value is checked against.
pub trait Credential {
    fn accepts(&self, header: Option<&[u8]>) -> bool;
}

impl Credential for BearerToken {
    fn accepts(&self, header: Option<&[u8]>) -> bool {
        BearerToken::accepts(self, header)
    }
}

impl Credential for CallerTokens {
    /// Compared with every token, each in constant time, so the time taken says neither
    /// whether nor which one matched.
    fn accepts(&self, header: Option<&[u8]>) -> bool {
        self.0
            .iter()
            .fold(false, |ok, t| ok | BearerToken::accepts(t, header))
    }
}

/// Checks a gRPC call's `authorization` metadata against `token` (no token: every call
/// passes).
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn check<T, C: Credential>(token: Option<&C>, req: Request<T>) -> Result<Request<T>, Status> {
    match token {
        None => Ok(req),
        Some(t) => {
            let header = req.metadata().get("authorization").map(|v| v.as_bytes());
            if t.accepts(header) {
                Ok(req)
            } else {
                Err(Status::unauthenticated(
                    "a valid bearer token is required (metadata `authorization: Bearer <token>`)",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_accepted() {
        let t = BearerToken::new("s3cret\n", "test").unwrap();
        assert!(t.accepts(Some(b"Bearer s3cret")));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"Bearer S3cret",
            b"bearer s3cret",
            b"s3cret",
            b"Bearer ",
        ] {
            assert!(
                !t.accepts(Some(wrong)),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!t.accepts(None));
        let e = BearerToken::new(" \n", "GRM_TOKEN").unwrap_err();
        assert_eq!(e.to_string(), "the bearer token in GRM_TOKEN is empty");
        assert_eq!(format!("{t:?}"), "BearerToken(<redacted>)");
    }

    #[test]
    fn calls_without_the_token_are_unauthenticated() {
        let t = BearerToken::new("abc", "test").unwrap();
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert("authorization", "Bearer abc".parse().unwrap());
        assert!(check(Some(&t), ok).is_ok());
        let e = check(Some(&t), Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(check(None::<&BearerToken>, Request::new(())).is_ok());
    }

    #[test]
    fn each_line_of_the_token_file_is_a_caller() {
        let t = CallerTokens::new("# team A\nalpha\n\n  beta  \n", "test").unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.accepts(Some(b"Bearer alpha")));
        assert!(t.accepts(Some(b"Bearer beta")));
        assert!(!t.accepts(Some(b"Bearer gamma")));
        assert!(!t.accepts(Some(b"Bearer # team A")));
        assert!(!t.accepts(None));
        let e = CallerTokens::new("# only a comment\n", "FILE").unwrap_err();
        assert_eq!(e.to_string(), "the bearer token in FILE is empty");
    }
}
