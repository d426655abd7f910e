//! API key settings (`key:secret` pairs), shared by the node and the control plane.
//!
//! The development key (`devkey` / `secret`) is public: whoever can reach a service using it
//! can mint an administrator's token. So an empty setting is an error rather than a quiet
//! fall-back to it, and secrets must be long enough that a token does not give them away to
//! an offline search.

use std::collections::BTreeMap;

/// The development API key and secret (see the module documentation).
pub const DEV_API_KEY: &str = "devkey";
pub const DEV_API_SECRET: &str = "secret";

/// Secrets shorter than this are refused: an HMAC-SHA256 key of fewer bytes than its output
/// is weaker than the signature it makes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a key setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the key list is empty (give key:secret pairs, or no setting at all)")]
    Empty,
    #[error("key {0:?} is not of the form key:secret")]
    NotAPair(String),
    #[error(
        "API key {0:?}: keys must be non-empty and secrets at least {MIN_SECRET_BYTES} bytes \
         long (e.g. `openssl rand -hex 32`)"
    )]
    Weak(String),
}

/// Parses and checks `key:secret,key2:secret2`.
pub fn parse_keys(s: &str) -> Result<BTreeMap<String, String>, KeyError> {
    if s.split(',').all(|p| p.trim().is_empty()) {
        return Err(KeyError::Empty);
    }
    let keys = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once(':')
                .ok_or_else(|| KeyError::NotAPair(pair.trim().to_owned()))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    check_keys(&keys)?;
    Ok(keys)
}

/// Checks keys however they were given (flags, a configuration file).
pub fn check_keys(keys: &BTreeMap<String, String>) -> Result<(), KeyError> {
    match keys
        .iter()
        .find(|(k, s)| k.is_empty() || s.len() < MIN_SECRET_BYTES)
    {
        Some((k, _)) => Err(KeyError::Weak(k.clone())),
        None => Ok(()),
    }
}

/// The development key as a key set.
pub fn dev_keys() -> BTreeMap<String, String> {
    [(DEV_API_KEY.to_owned(), DEV_API_SECRET.to_owned())].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_weak_or_empty_ones_are_refused() {
        let long = "0123456789abcdef0123456789abcdef";
        let k = parse_keys(&format!("a:{long}, b:{long}")).unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(parse_keys(""), Err(KeyError::Empty));
        assert_eq!(parse_keys(" , "), Err(KeyError::Empty));
        assert_eq!(
            parse_keys("nocolon"),
            Err(KeyError::NotAPair("nocolon".into()))
        );
        assert_eq!(
            parse_keys(&format!("a:{}", &long[1..])),
            Err(KeyError::Weak("a".into()))
        );
        assert_eq!(
            parse_keys(&format!(":{long}")),
            Err(KeyError::Weak("".into()))
        );
    }
}
