//! Access tokens: HS256 JWTs with LiveKit-compatible claims.
//!
//! Using LiveKit's claim layout means existing token tooling (server SDKs, `lk token`) mints
//! tokens this node accepts: `iss` is the API key, `sub` the participant identity, and the
//! `video` grant carries the room and permissions. The key that verifies a token is looked up by
//! its `iss`, so several API keys can be valid at once (key rotation).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `video` grant of a token.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default)]
    pub room_join: bool,
    /// Absent means allowed, as in LiveKit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    /// Absent means allowed, as in LiveKit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(default)]
    pub room_admin: bool,
    #[serde(default)]
    pub room_create: bool,
    #[serde(default)]
    pub room_list: bool,
    /// May start and stop recordings (LiveKit's name; here of the token's room, or of every
    /// room if it names none).
    #[serde(default)]
    pub room_record: bool,
    /// May change its own name, metadata and attributes (LiveKit's name; absent: may not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_update_own_metadata: bool,
}

/// The claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The API key that signed the token.
    pub iss: String,
    /// Participant identity.
    #[serde(default)]
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub video: VideoGrant,
    /// The participant's metadata and attributes at its join (LiveKit's claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
}

/// What a verified token allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    pub identity: String,
    pub name: String,
    pub room: Option<String>,
    pub room_join: bool,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub room_admin: bool,
    pub room_create: bool,
    pub room_list: bool,
    pub room_record: bool,
    pub can_update_own_metadata: bool,
    /// From the token's `metadata` and `attributes` claims.
    pub metadata: String,
    pub attributes: BTreeMap<String, String>,
}

impl Grants {
    /// Whether the holder may start, stop and list recordings of `room`: `roomRecord` or
    /// `roomAdmin`, for that room (or a token naming no room).
    pub fn may_record(&self, room: &str) -> Result<(), AuthError> {
        if !self.room_record && !self.room_admin {
            return Err(AuthError::Forbidden(
                "token grants neither roomRecord nor roomAdmin",
            ));
        }
        match &self.room {
            Some(r) if r != room => Err(AuthError::Forbidden("token is for another room")),
            _ => Ok(()),
        }
    }

    /// Whether the holder may administer `room` (remove participants, mute, delete...). A
    /// token naming no room administers every room.
    pub fn may_admin(&self, room: &str) -> Result<(), AuthError> {
        if !self.room_admin {
            return Err(AuthError::Forbidden("token does not grant roomAdmin"));
        }
        match &self.room {
            Some(r) if r != room => Err(AuthError::Forbidden("token administers another room")),
            _ => Ok(()),
        }
    }

    /// Whether the holder may administer the cluster itself (nodes): `roomAdmin` for no
    /// particular room.
    pub fn may_admin_cluster(&self) -> Result<(), AuthError> {
        if self.room_admin && self.room.is_none() {
            Ok(())
        } else {
            Err(AuthError::Forbidden(
                "cluster operations need roomAdmin without a room",
            ))
        }
    }

    /// Whether the holder may join `room`.
    pub fn may_join(&self, room: &str) -> Result<(), AuthError> {
        if !self.room_join {
            return Err(AuthError::Forbidden("token does not grant roomJoin"));
        }
        match &self.room {
            Some(r) if r == room => Ok(()),
            Some(_) => Err(AuthError::Forbidden("token is for another room")),
            None => Err(AuthError::Forbidden("token names no room")),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token was presented.
    #[error("missing access token")]
    Missing,
    /// The token is not a well-formed JWT with our claims.
    #[error("malformed access token")]
    Malformed,
    /// The token's `iss` is not a configured API key.
    #[error("unknown API key")]
    UnknownKey,
    /// The signature does not match the API secret.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` has not been reached.
    #[error("token not yet valid")]
    NotYetValid,
    /// The token is valid but does not allow this action.
    #[error("{0}")]
    Forbidden(&'static str),
}

impl AuthError {
    /// Authentication failures (401) versus authorisation failures (403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::Forbidden(_))
    }
}

/// Verifies tokens against the configured API keys.
pub struct Authenticator {
    keys: HashMap<String, (DecodingKey, EncodingKey)>,
}

impl Authenticator {
    /// `keys` maps API key to API secret.
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|(k, s)| {
                    (
                        k.clone(),
                        (
                            DecodingKey::from_secret(s.as_bytes()),
                            EncodingKey::from_secret(s.as_bytes()),
                        ),
                    )
                })
                .collect(),
        }
    }

    /// Verifies a token and returns its grants.
    pub fn verify(&self, token: &str) -> Result<Grants, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Read `iss` first (unverified) only to pick the key; the claims are then verified.
        let unverified: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| AuthError::Malformed)?;
        let (key, _) = self
            .keys
            .get(&unverified.iss)
            .ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            _ => AuthError::Malformed,
        })?;
        let c = data.claims;
        Ok(Grants {
            name: c.name.unwrap_or_else(|| c.sub.clone()),
            identity: c.sub,
            room: c.video.room,
            room_join: c.video.room_join,
            can_publish: c.video.can_publish.unwrap_or(true),
            can_subscribe: c.video.can_subscribe.unwrap_or(true),
            room_admin: c.video.room_admin,
            room_create: c.video.room_create,
            room_list: c.video.room_list,
            room_record: c.video.room_record,
            can_update_own_metadata: c.video.can_update_own_metadata,
            metadata: c.metadata.unwrap_or_default(),
            attributes: c.attributes.unwrap_or_default(),
        })
    }

    /// Signs claims with the secret of `claims.iss`.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let (_, key) = self.keys.get(&claims.iss).ok_or(AuthError::UnknownKey)?;
        sign_with(key, claims)
    }
}

fn sign_with(key: &EncodingKey, claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key)
        .map_err(|_| AuthError::Malformed)
}

/// Mints a token with `secret` (what the `token` subcommand does).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    sign_with(&EncodingKey::from_secret(secret.as_bytes()), claims)
}

/// Seconds since the Unix epoch, `valid_for` from now.
pub fn expiry_in(valid_for: Duration) -> u64 {
    (SystemTime::now() + valid_for)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims of an administrator token: every grant, for every room (no room named), as the
/// control plane and `sfuctl` use.
pub fn admin_claims(api_key: &str, valid_for: Duration) -> Claims {
    Claims {
        iss: api_key.to_owned(),
        sub: "admin".to_owned(),
        exp: expiry_in(valid_for),
        nbf: None,
        name: None,
        metadata: None,
        attributes: None,
        video: VideoGrant {
            room_admin: true,
            room_create: true,
            room_list: true,
            ..Default::default()
        },
    }
}

/// Claims for joining `room` as `identity` with the given permissions.
pub fn join_claims(
    api_key: &str,
    identity: &str,
    room: &str,
    can_publish: bool,
    can_subscribe: bool,
    valid_for: Duration,
) -> Claims {
    Claims {
        iss: api_key.to_owned(),
        sub: identity.to_owned(),
        exp: expiry_in(valid_for),
        nbf: None,
        name: Some(identity.to_owned()),
        metadata: None,
        attributes: None,
        video: VideoGrant {
            room: Some(room.to_owned()),
            room_join: true,
            can_publish: Some(can_publish),
            can_subscribe: Some(can_subscribe),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let keys: HashMap<String, String> = [("devkey".to_owned(), "secret".to_owned())].into();
        Authenticator::new(&keys)
    }

    #[test]
    fn accepts_a_valid_token_and_defaults_permissions_like_livekit() {
        let a = auth();
        let mut c = join_claims(
            "devkey",
            "alice",
            "demo",
            true,
            true,
            Duration::from_secs(60),
        );
        c.video.can_publish = None;
        c.video.can_subscribe = None;
        let g = a.verify(&a.sign(&c).unwrap()).unwrap();
        assert_eq!(g.identity, "alice");
        assert!(g.can_publish && g.can_subscribe);
        assert_eq!(g.may_join("demo"), Ok(()));
        assert!(g.may_join("other").unwrap_err().is_forbidden());
    }

    #[test]
    fn metadata_attributes_and_their_grant_come_from_livekits_claims() {
        let a = auth();
        let mut c: Claims = serde_json::from_value(serde_json::json!({
            "iss": "devkey", "sub": "alice", "exp": expiry_in(Duration::from_secs(60)),
            "metadata": "{\"avatar\":1}", "attributes": {"team": "red"},
            "video": {"room": "demo", "roomJoin": true, "canUpdateOwnMetadata": true}
        }))
        .unwrap();
        let g = a.verify(&a.sign(&c).unwrap()).unwrap();
        assert_eq!(g.metadata, "{\"avatar\":1}");
        assert_eq!(g.attributes["team"], "red");
        assert!(g.can_update_own_metadata);
        c.video.can_update_own_metadata = false;
        c.metadata = None;
        let g = a.verify(&a.sign(&c).unwrap()).unwrap();
        assert!(
            !g.can_update_own_metadata,
            "absent: not allowed, as in LiveKit"
        );
        assert_eq!(g.metadata, "");
    }

    #[test]
    fn room_record_lets_a_participant_record_its_own_room_only() {
        let a = auth();
        let mut c = join_claims(
            "devkey",
            "host",
            "demo",
            true,
            true,
            Duration::from_secs(60),
        );
        let plain = a.verify(&a.sign(&c).unwrap()).unwrap();
        assert_eq!(
            plain.may_record("demo"),
            Err(AuthError::Forbidden(
                "token grants neither roomRecord nor roomAdmin"
            ))
        );
        // LiveKit's claim name.
        let json = serde_json::to_value(&c.video).unwrap();
        assert!(json.get("roomRecord").is_some(), "{json}");
        c.video.room_record = true;
        let host = a.verify(&a.sign(&c).unwrap()).unwrap();
        assert_eq!(host.may_record("demo"), Ok(()));
        assert!(host.may_record("other").unwrap_err().is_forbidden());
        assert!(
            host.may_admin("demo").is_err(),
            "recording is not administering"
        );
    }

    #[test]
    fn refuses_bad_tokens_with_distinct_reasons() {
        let a = auth();
        let c = join_claims("devkey", "bob", "demo", true, true, Duration::from_secs(60));
        assert_eq!(a.verify(""), Err(AuthError::Missing));
        assert_eq!(a.verify("not.a.jwt"), Err(AuthError::Malformed));
        assert_eq!(
            a.verify(&mint("wrong", &c).unwrap()),
            Err(AuthError::BadSignature)
        );
        let mut other = c.clone();
        other.iss = "nokey".into();
        assert_eq!(
            a.verify(&mint("secret", &other).unwrap()),
            Err(AuthError::UnknownKey)
        );
        let mut expired = c.clone();
        expired.exp = 1_000;
        assert_eq!(
            a.verify(&a.sign(&expired).unwrap()),
            Err(AuthError::Expired)
        );
        let mut early = c;
        early.nbf = Some(expiry_in(Duration::from_secs(3600)));
        assert_eq!(
            a.verify(&a.sign(&early).unwrap()),
            Err(AuthError::NotYetValid)
        );
    }
}
