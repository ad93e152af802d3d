//! The cluster's shared secrets, and the keys and proofs derived from them.
//!
//! The secret itself never travels. Each secret gives, by HKDF-SHA256, one key per purpose
//! (internal calls, etcd registrations), so a MAC made for one purpose is worthless for
//! another. Each internal call carries a proof of its own (`grm-proof`: the key's id, the time,
//! a random nonce, the member it is for and an HMAC over them and the method), checked by the
//! callee: within [`PROOF_WINDOW`] of its clock, its nonce never seen before, made for this
//! member (the address it registered in etcd). A process listening where a member used to be
//! learns proofs made for that member alone: no other member takes them, and the secret they
//! were made with never reached it. (Members given by address, outside etcd, get proofs
//! bound to no member: there the membership is the operator's list, not something a stranger
//! can join.)
//!
//! Several secrets are accepted at once, each named by a key id; the first one signs. Rotation
//! without a flag day: add the new secret as a second line on every node; then move it first;
//! then drop the old line.

use crate::auth::to_hex;
use ring::{hkdf, hmac};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// How far a proof's time may be from the callee's clock (either way).
pub const PROOF_WINDOW: Duration = Duration::from_secs(60);

/// The shortest secret accepted.
const MIN_SECRET: usize = 8;

/// The metadata (HTTP header) that carries an internal call's proof.
pub const PROOF_HEADER: &str = "grm-proof";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("reading the cluster token file {}: {}", .0.path, .0.source)]
    Read(#[from] crate::auth::ReadSecret),
    #[error("{0} holds no cluster token")]
    Empty(String),
    #[error("{origin}, line {line}: the cluster token is shorter than 8 characters")]
    Short { origin: String, line: usize },
    #[error("{origin}, line {line}: the key id `{id}` is given twice")]
    DuplicateId {
        origin: String,
        line: usize,
        id: String,
    },
}

/// Why a proof was refused (the callee answers UNAUTHENTICATED with this).
#[derive(Debug, Error, PartialEq)]
pub enum ProofError {
    #[error("an internal call needs the cluster's proof (metadata `grm-proof`)")]
    Missing,
    #[error("the `grm-proof` metadata is malformed")]
    Malformed,
    #[error("the proof names key id `{0}`, which this node does not hold")]
    UnknownKey(String),
    #[error("the proof's time is {0} s from this node's clock (allowed: 60 s; are the clocks synchronised?)")]
    Stale(i64),
    #[error("the proof does not match the call")]
    Forged,
    #[error("the proof was made for the member `{0}`, not this one")]
    OtherMember(String),
    #[error("the proof was used before (a replay)")]
    Replayed,
}

/// What a key is for: each purpose has its own derived key.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Call,
    Registration,
    KeyId,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::Call => b"grm-cluster v1 internal call",
            Purpose::Registration => b"grm-cluster v1 etcd registration",
            Purpose::KeyId => b"grm-cluster v1 key id",
        }
    }
}

struct Key {
    id: String,
    call: hmac::Key,
    registration: hmac::Key,
}

fn derive(secret: &[u8], purpose: Purpose) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"grm-cluster").extract(secret);
    let info = [purpose.info()];
    // 32 bytes of output, far below HKDF's limit: cannot fail.
    match prk.expand(&info, hmac::HMAC_SHA256) {
        Ok(okm) => hmac::Key::from(okm),
        Err(_) => unreachable!("HKDF-SHA256 gives 32 bytes"),
    }
}

impl Key {
    fn new(id: Option<&str>, secret: &[u8]) -> Self {
        let id = match id {
            Some(id) => id.to_string(),
            // Named by a digest of a key of its own: the id says nothing of the secret.
            None => to_hex(&hmac::sign(&derive(secret, Purpose::KeyId), b"id").as_ref()[..4]),
        };
        Key {
            id,
            call: derive(secret, Purpose::Call),
            registration: derive(secret, Purpose::Registration),
        }
    }
}

/// Nonces seen within the window, forgotten once too old to be accepted anyway.
#[derive(Default)]
struct Seen {
    nonces: HashMap<String, i64>,
    prune_at: usize,
}

/// The secrets a node holds; cheap to clone. `Debug` never shows them.
#[derive(Clone)]
pub struct ClusterKeys {
    keys: Arc<[Key]>,
    seen: Arc<Mutex<Seen>>,
}

impl fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        write!(f, "ClusterKeys(ids {ids:?}, secrets redacted)")
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterKeys {
    /// One secret a line (blank lines and `#` comments skipped), as `ID:SECRET` to name its key
    /// id (letters, digits, `-`, `_`; up to 32) or `SECRET` alone (its id is derived from it).
    /// The first line's key signs; every line's is accepted.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, secret) = match line.split_once(':') {
                Some((id, secret)) if valid_id(id) => (Some(id), secret.trim()),
                _ => (None, line),
            };
            // An empty or short secret (`k1:$TOKEN` with TOKEN unset) is a guessable key.
            if secret.len() < MIN_SECRET {
                return Err(KeyError::Short {
                    origin: origin.to_string(),
                    line: n + 1,
                });
            }
            let key = Key::new(id, secret.as_bytes());
            if keys.iter().any(|k| k.id == key.id) {
                return Err(KeyError::DuplicateId {
                    origin: origin.to_string(),
                    line: n + 1,
                    id: key.id,
                });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty(origin.to_string()));
        }
        Ok(Self {
            keys: keys.into(),
            seen: Arc::default(),
        })
    }

    /// The secrets from `file` when given, else from the environment variable `var`, else none.
    pub fn from_file_or_env(file: Option<&Path>, var: &str) -> Result<Option<Self>, KeyError> {
        match crate::auth::secret_text(file, var)? {
            Some((text, origin)) => Self::parse(&text, &origin).map(Some),
            None => Ok(None),
        }
    }

    /// A fresh random secret (for `grm serve`'s in-process nodes, which nobody else reaches).
    pub fn random() -> Self {
        let mut bytes = [0u8; 24];
        // Without an OS random source the process could not have started its TLS either.
        getrandom::fill(&mut bytes).expect("the OS random source");
        Self {
            keys: vec![Key::new(None, to_hex(&bytes).as_bytes())].into(),
            seen: Arc::default(),
        }
    }

    /// The ids of the keys held, the signing one first (for logs).
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    fn signing(&self) -> &Key {
        &self.keys[0]
    }

    fn find(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// A registration's signature: `ID.HMAC` under the signing key's registration key.
    pub fn sign_registration(&self, message: &[u8]) -> String {
        let k = self.signing();
        format!(
            "{}.{}",
            k.id,
            to_hex(hmac::sign(&k.registration, message).as_ref())
        )
    }

    /// Whether `sig` is a registration signature over `message` under any key held.
    pub fn verify_registration(&self, message: &[u8], sig: &str) -> bool {
        let Some((id, tag)) = sig.split_once('.') else {
            return false;
        };
        let (Some(k), Some(tag)) = (self.find(id), from_hex(tag)) else {
            return false;
        };
        hmac::verify(&k.registration, message, &tag).is_ok()
    }

    fn call_message(path: &str, ms: i64, nonce: &str, member: &str) -> Vec<u8> {
        format!("grm internal call v1\n{path}\n{ms}\n{nonce}\n{member}").into_bytes()
    }

    /// A fresh proof for one internal call of the gRPC method `path`
    /// (`/grm.v1.WorkerService/Generate`) to `member` (its registered address; empty: any):
    /// `v1.ID.MILLIS.NONCE.MEMBER(hex).HMAC`.
    pub fn prove_call(&self, path: &str, member: &str) -> String {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source");
        let nonce = to_hex(&nonce);
        let ms = now_ms();
        let k = self.signing();
        let tag = hmac::sign(&k.call, &Self::call_message(path, ms, &nonce, member));
        format!(
            "v1.{}.{ms}.{nonce}.{}.{}",
            k.id,
            to_hex(member.as_bytes()),
            to_hex(tag.as_ref())
        )
    }

    /// Checks a call's proof for the method `path` at the member `me` (its registered
    /// address): a proof made for another member is refused, one made for none accepted. A
    /// good proof is spent (its nonce remembered until it would be too old anyway).
    pub fn check_call(&self, proof: Option<&[u8]>, path: &str, me: &str) -> Result<(), ProofError> {
        let proof = proof.ok_or(ProofError::Missing)?;
        let proof = std::str::from_utf8(proof).map_err(|_| ProofError::Malformed)?;
        let parts: Vec<&str> = proof.split('.').collect();
        let [version, id, ms, nonce, member, tag] = parts[..] else {
            return Err(ProofError::Malformed);
        };
        if version != "v1" || nonce.len() != 32 {
            return Err(ProofError::Malformed);
        }
        let ms: i64 = ms.parse().map_err(|_| ProofError::Malformed)?;
        let tag = from_hex(tag).ok_or(ProofError::Malformed)?;
        let member = if member.is_empty() {
            String::new()
        } else {
            from_hex(member)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(ProofError::Malformed)?
        };
        let k = self
            .find(id)
            .ok_or_else(|| ProofError::UnknownKey(id.to_string()))?;
        let now = now_ms();
        let window = PROOF_WINDOW.as_millis() as i64;
        // The time is the caller's: no arithmetic on it may overflow.
        if now.abs_diff(ms) > window as u64 {
            return Err(ProofError::Stale(now.saturating_sub(ms) / 1000));
        }
        hmac::verify(&k.call, &Self::call_message(path, ms, nonce, &member), &tag)
            .map_err(|_| ProofError::Forged)?;
        if !member.is_empty() && member != me {
            return Err(ProofError::OtherMember(member));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.nonces.len() >= seen.prune_at {
            // Amortised: forget what is past the window, then wait for the map to double.
            seen.nonces.retain(|_, t| now - *t <= window);
            seen.prune_at = (seen.nonces.len() * 2).max(1024);
        }
        let key = format!("{id}.{nonce}");
        if seen.nonces.insert(key, ms).is_some() {
            return Err(ProofError::Replayed);
        }
        Ok(())
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEN: &str = "/grm.v1.WorkerService/Generate";

    #[test]
    fn a_proof_is_good_once_for_its_method_and_under_a_key_held() {
        let keys = ClusterKeys::parse("s3cret-key\n", "test").unwrap();
        let p = keys.prove_call(GEN, "");
        assert!(!p.contains("s3cret-key"), "the secret never travels: {p}");
        assert_eq!(keys.check_call(Some(p.as_bytes()), GEN, "w1:50061"), Ok(()));
        assert_eq!(
            keys.check_call(Some(p.as_bytes()), GEN, "w1:50061"),
            Err(ProofError::Replayed)
        );
        let p = keys.prove_call(GEN, "");
        assert_eq!(
            keys.check_call(
                Some(p.as_bytes()),
                "/grm.v1.WorkerService/Status",
                "w1:50061"
            ),
            Err(ProofError::Forged),
            "bound to its method"
        );
        let other = ClusterKeys::parse("another-key", "test").unwrap();
        let p = other.prove_call(GEN, "");
        assert!(matches!(
            keys.check_call(Some(p.as_bytes()), GEN, "w1:50061"),
            Err(ProofError::UnknownKey(_))
        ));
        // Same id, other secret: forged.
        let a = ClusterKeys::parse("k1:one-secret", "test").unwrap();
        let b = ClusterKeys::parse("k1:two-secret", "test").unwrap();
        let p = b.prove_call(GEN, "");
        assert_eq!(
            a.check_call(Some(p.as_bytes()), GEN, "w1:50061"),
            Err(ProofError::Forged)
        );
        assert_eq!(
            keys.check_call(None, GEN, "w1:50061"),
            Err(ProofError::Missing)
        );
        assert_eq!(
            keys.check_call(Some(b"Bearer s3cret-key"), GEN, "w1:50061"),
            Err(ProofError::Malformed)
        );
    }

    #[test]
    fn a_proof_made_for_one_member_is_refused_by_another() {
        let keys = ClusterKeys::parse("s3cret-key", "test").unwrap();
        let p = keys.prove_call(GEN, "w1:50061");
        assert_eq!(
            keys.check_call(Some(p.as_bytes()), GEN, "w2:50061"),
            Err(ProofError::OtherMember("w1:50061".into()))
        );
        let p = keys.prove_call(GEN, "w1:50061");
        assert_eq!(keys.check_call(Some(p.as_bytes()), GEN, "w1:50061"), Ok(()));
        // The member is covered by the MAC: rebinding it is a forgery.
        let p = keys.prove_call(GEN, "w1:50061");
        let mut parts: Vec<String> = p.split('.').map(str::to_string).collect();
        parts[4] = to_hex(b"w2:50061");
        let rebound = parts.join(".");
        assert_eq!(
            keys.check_call(Some(rebound.as_bytes()), GEN, "w2:50061"),
            Err(ProofError::Forged)
        );
    }

    #[test]
    fn an_old_proof_is_refused() {
        let keys = ClusterKeys::parse("s3cret-key", "test").unwrap();
        let k = keys.signing();
        let ms = now_ms() - 61_000;
        let nonce = "00112233445566778899aabbccddeeff";
        let tag = hmac::sign(&k.call, &ClusterKeys::call_message(GEN, ms, nonce, ""));
        let p = format!("v1.{}.{ms}.{nonce}..{}", k.id, to_hex(tag.as_ref()));
        assert_eq!(
            keys.check_call(Some(p.as_bytes()), GEN, "w1:50061"),
            Err(ProofError::Stale(61))
        );
    }

    #[test]
    fn rotation_accepts_both_secrets_while_the_new_one_is_introduced() {
        // Step 1: every node holds old (signing) and new.
        let old_only = ClusterKeys::parse("old:aaaaaaaa", "t").unwrap();
        let both = ClusterKeys::parse("old:aaaaaaaa\nnew:bbbbbbbb", "t").unwrap();
        // Step 2: some nodes sign with new, others still with old.
        let new_first = ClusterKeys::parse("new:bbbbbbbb\nold:aaaaaaaa", "t").unwrap();
        let new_only = ClusterKeys::parse("new:bbbbbbbb", "t").unwrap();
        for (signer, checker) in [
            (&old_only, &both),
            (&both, &old_only),
            (&new_first, &both),
            (&both, &new_first),
            (&new_only, &new_first),
            (&new_first, &new_only),
        ] {
            let p = signer.prove_call(GEN, "");
            assert_eq!(
                checker.check_call(Some(p.as_bytes()), GEN, "w1:50061"),
                Ok(())
            );
            let sig = signer.sign_registration(b"member");
            assert!(checker.verify_registration(b"member", &sig));
        }
        let p = old_only.prove_call(GEN, "");
        assert!(new_only
            .check_call(Some(p.as_bytes()), GEN, "w1:50061")
            .is_err());
        assert!(!new_only.verify_registration(b"member", &old_only.sign_registration(b"member")));
    }

    #[test]
    fn keys_of_different_purposes_differ_and_ids_are_checked() {
        let keys = ClusterKeys::parse("s3cret-key", "t").unwrap();
        let sig = keys.sign_registration(b"x");
        assert!(keys.verify_registration(b"x", &sig));
        assert!(!keys.verify_registration(b"y", &sig));
        let k = keys.signing();
        assert_ne!(
            hmac::sign(&k.call, b"x").as_ref(),
            hmac::sign(&k.registration, b"x").as_ref()
        );
        assert!(matches!(
            ClusterKeys::parse("a:11111111\na:22222222", "f"),
            Err(KeyError::DuplicateId { line: 2, .. })
        ));
        assert!(matches!(
            ClusterKeys::parse("# nothing\n\n", "f"),
            Err(KeyError::Empty(_))
        ));
        assert!(matches!(
            ClusterKeys::parse("k1:\n", "f"),
            Err(KeyError::Short { line: 1, .. })
        ));
        // A secret with a colon that is not an id stays whole.
        let k = ClusterKeys::parse("not an id:rest", "f").unwrap();
        assert_eq!(k.ids().len(), 1);
        assert_eq!(k.ids()[0].len(), 8);
        assert!(format!("{k:?}").contains("redacted"));
    }
}
