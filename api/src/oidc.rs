//! OIDC / JWT bearer tokens, so a company's SSO can front flotilla: a token
//! signed by the configured issuer (RS256 or ES256, a key of its JWKS), for
//! the configured audience, within `nbf`..`exp`, whose role claim names a
//! flotilla role. The JWKS is read at start, from a file or a URL the
//! binary fetches, and again periodically ([`OidcVerifier::replace_keys`]):
//! an issuer's key rotation needs no restart.

use std::collections::HashMap;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

use scheduler::auth::{Principal, Role, check_principal_name};

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

/// How to verify and read an issuer's tokens.
#[derive(Clone)]
pub struct OidcVerifier {
    issuer: String,
    audience: String,
    /// The claim that holds the flotilla role (a string, or a list whose
    /// first known role wins).
    role_claim: String,
    /// The claim that names the principal (`sub`, `email`, …).
    name_claim: String,
    /// The issuer's keys by `kid` (`""` for a key without one); shared by
    /// every clone, so a refresh reaches them all.
    keys: std::sync::Arc<std::sync::RwLock<Keys>>,
}

type Keys = HashMap<String, (Algorithm, DecodingKey)>;

/// The RS256 and ES256 keys of a JWKS; an issuer with none is an error.
fn keys_of(jwks_json: &str) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_str(jwks_json).map_err(|error| format!("JWKS: {error}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Ok(algorithm) = algorithm_of(jwk) else {
            continue;
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|error| format!("JWKS key: {error}"))?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        keys.insert(kid, (algorithm, key));
    }
    if keys.is_empty() {
        return Err("the JWKS has no RS256 or ES256 key".into());
    }
    Ok(keys)
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("role_claim", &self.role_claim)
            .field("name_claim", &self.name_claim)
            .field(
                "keys",
                &self.read_keys().keys().cloned().collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn algorithm_of(jwk: &Jwk) -> Result<Algorithm, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Ok(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Ok(Algorithm::ES256)
        }
        _ => Err("only RS256 (RSA) and ES256 (P-256) keys are accepted".into()),
    }
}

impl OidcVerifier {
    /// Reads the JWKS (JSON text, bounded by the caller) and keeps its RS256
    /// and ES256 keys; an issuer with none is an error.
    pub fn new(
        issuer: &str,
        audience: &str,
        jwks_json: &str,
        role_claim: &str,
        name_claim: &str,
    ) -> Result<Self, String> {
        let keys = keys_of(jwks_json)?;
        if issuer.is_empty() || audience.is_empty() {
            return Err("OIDC needs an issuer and an audience".into());
        }
        Ok(Self {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            role_claim: role_claim.to_string(),
            name_claim: name_claim.to_string(),
            keys: std::sync::Arc::new(std::sync::RwLock::new(keys)),
        })
    }

    /// Replaces the issuer's keys with those of a JWKS read again (a key
    /// rotation); a JWKS without a usable key changes nothing.
    pub fn replace_keys(&self, jwks_json: &str) -> Result<usize, String> {
        let keys = keys_of(jwks_json)?;
        let count = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys;
        Ok(count)
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True for what looks like a JWT (three dot-separated parts), as opposed
    /// to a flotilla token.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && !token.starts_with("flt_")
    }

    /// The principal of a valid token; why not, for anything else (shown in
    /// the 401).
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        self.verify_signed(token).map(|signed| signed.principal)
    }

    /// The issuer trusted.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether the key set (as last read) still holds the key `key_id`.
    pub fn has_key(&self, key_id: &str) -> bool {
        self.read_keys().contains_key(key_id)
    }

    /// [`Self::verify`], with the key that signed the token and its expiry.
    pub fn verify_signed(&self, token: &str) -> Result<Signed, String> {
        let header = decode_header(token).map_err(|error| format!("not a JWT: {error}"))?;
        let kid = header.kid.clone().unwrap_or_default();
        let keys = self.read_keys();
        let (key_id, (algorithm, key)) = keys
            .get_key_value(&kid)
            .or_else(|| (keys.len() == 1).then(|| keys.iter().next()).flatten())
            .ok_or_else(|| format!("no key {kid:?} in the issuer's JWKS"))?;
        if header.alg != *algorithm {
            return Err(format!(
                "the token is {:?}; its key is for {algorithm:?}",
                header.alg
            ));
        }
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let claims = decode::<HashMap<String, Value>>(token, key, &validation)
            .map_err(|error| format!("the token is not valid: {error}"))?
            .claims;
        let name = claims
            .get(&self.name_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the token has no {:?} claim", self.name_claim))?;
        check_principal_name(name)?;
        let role = match claims.get(&self.role_claim) {
            Some(Value::String(role)) => role.parse::<Role>().ok(),
            Some(Value::Array(roles)) => roles
                .iter()
                .filter_map(Value::as_str)
                .find_map(|role| role.parse::<Role>().ok()),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "the token's {:?} claim names no flotilla role",
                self.role_claim
            )
        })?;
        let expires_ms = claims
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|exp| exp as u64)))
            .map_or(0, |seconds| seconds.saturating_mul(1000));
        Ok(Signed {
            principal: Principal {
                name: name.to_string(),
                role,
                issued_by: None,
            },
            key_id: key_id.clone(),
            expires_ms,
        })
    }
}

/// A verified SSO token: whom it names, the key that signed it (as the key
/// set names it) and when it expires (Unix ms).
#[derive(Debug, Clone)]
pub struct Signed {
    pub principal: Principal,
    pub key_id: String,
    pub expires_ms: u64,
}

/// An issuer with a fresh key (P-256, or RSA-2048 as most identity
/// providers use), for tests and trying OIDC out: its JWKS and the tokens
/// it signs.
#[cfg(any(test, feature = "testsuite"))]
pub struct TestIssuer {
    pub issuer: String,
    pub kid: String,
    key: TestKey,
}

#[cfg(any(test, feature = "testsuite"))]
enum TestKey {
    /// PKCS#8 private key and the uncompressed public point.
    P256 { pkcs8: Vec<u8>, point: Vec<u8> },
    /// PKCS#1 private key, modulus and exponent (big-endian, no leading 0).
    Rsa {
        pkcs1: Vec<u8>,
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// One DER element at the start of `input`: (tag, contents, rest).
#[cfg(any(test, feature = "testsuite"))]
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

/// An INTEGER's bytes without the sign byte.
#[cfg(any(test, feature = "testsuite"))]
fn unsigned(integer: &[u8]) -> Vec<u8> {
    match integer {
        [0, rest @ ..] if !rest.is_empty() => rest.to_vec(),
        bytes => bytes.to_vec(),
    }
}

#[cfg(any(test, feature = "testsuite"))]
impl TestIssuer {
    pub fn new(issuer: &str, kid: &str) -> Result<Self, String> {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "no P-256 key".to_string())?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| "no P-256 key".to_string())?;
        Ok(Self {
            issuer: issuer.to_string(),
            kid: kid.to_string(),
            key: TestKey::P256 {
                pkcs8: pkcs8.as_ref().to_vec(),
                point: pair.public_key().as_ref().to_vec(),
            },
        })
    }

    /// An issuer signing RS256 with a fresh 2,048-bit RSA key: its tokens
    /// are about 540 characters long.
    pub fn new_rsa(issuer: &str, kid: &str) -> Result<Self, String> {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        use aws_lc_rs::signature::KeyPair as _;
        let refused = |what: &str| format!("no RSA key: {what}");
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| refused("generation failed"))?;
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| refused("no PKCS#8"))?;
        // PrivateKeyInfo: SEQUENCE { version, algorithm, OCTET STRING { RSAPrivateKey } }.
        let (_, info, _) = der_element(pkcs8.as_ref()).ok_or_else(|| refused("PKCS#8"))?;
        let (_, _, after_version) = der_element(info).ok_or_else(|| refused("version"))?;
        let (_, _, after_algorithm) =
            der_element(after_version).ok_or_else(|| refused("algorithm"))?;
        let (_, pkcs1, _) = der_element(after_algorithm).ok_or_else(|| refused("key"))?;
        // RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }.
        let (_, public, _) =
            der_element(pair.public_key().as_ref()).ok_or_else(|| refused("public key"))?;
        let (_, n, after_n) = der_element(public).ok_or_else(|| refused("modulus"))?;
        let (_, e, _) = der_element(after_n).ok_or_else(|| refused("exponent"))?;
        Ok(Self {
            issuer: issuer.to_string(),
            kid: kid.to_string(),
            key: TestKey::Rsa {
                pkcs1: pkcs1.to_vec(),
                n: unsigned(n),
                e: unsigned(e),
            },
        })
    }

    /// The JWKS with this issuer's one key.
    pub fn jwks(&self) -> String {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let key = match &self.key {
            TestKey::P256 { point, .. } => {
                // An uncompressed point: 0x04, then X and Y, 32 bytes each.
                let x = point.get(1..33).unwrap_or_default();
                let y = point.get(33..65).unwrap_or_default();
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
                    "kid": self.kid, "x": b64(x), "y": b64(y),
                })
            }
            TestKey::Rsa { n, e, .. } => serde_json::json!({
                "kty": "RSA", "use": "sig", "alg": "RS256",
                "kid": self.kid, "n": b64(n), "e": b64(e),
            }),
        };
        serde_json::json!({ "keys": [key] }).to_string()
    }

    /// A token with `claims` (plus `iss`), signed with this issuer's key.
    pub fn sign(&self, mut claims: serde_json::Value) -> Result<String, String> {
        claims["iss"] = serde_json::Value::String(self.issuer.clone());
        let (algorithm, key) = match &self.key {
            TestKey::P256 { pkcs8, .. } => (
                Algorithm::ES256,
                jsonwebtoken::EncodingKey::from_ec_der(pkcs8),
            ),
            TestKey::Rsa { pkcs1, .. } => (
                Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_der(pkcs1),
            ),
        };
        let mut header = jsonwebtoken::Header::new(algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key).map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn now() -> u64 {
        protocol::job::UnixMillis::now().0 / 1000
    }

    fn verifier(issuer: &TestIssuer) -> OidcVerifier {
        OidcVerifier::new(
            &issuer.issuer,
            "flotilla",
            &issuer.jwks(),
            "flotilla_role",
            "sub",
        )
        .unwrap()
    }

    #[test]
    fn a_token_of_the_issuer_names_its_principal_and_role() {
        let issuer = TestIssuer::new("https://sso.example", "k1").unwrap();
        let token = issuer
            .sign(json!({"sub": "alice@example.com", "aud": "flotilla", "exp": now() + 600, "flotilla_role": ["staff", "operator"]}))
            .unwrap();
        assert!(OidcVerifier::looks_like_jwt(&token));
        let principal = verifier(&issuer).verify(&token).unwrap();
        assert_eq!(principal.name, "alice@example.com");
        assert_eq!(principal.role, Role::Operator);
    }

    #[test]
    fn a_rotated_key_set_takes_effect_in_every_clone_without_a_restart() {
        let old = TestIssuer::new("https://sso.example", "k1").unwrap();
        let new = TestIssuer::new("https://sso.example", "k2").unwrap();
        let claims = json!({"sub": "alice", "aud": "flotilla", "exp": now() + 600, "flotilla_role": "viewer"});
        let verifier = verifier(&old);
        let serving = verifier.clone();
        assert!(serving.verify(&new.sign(claims.clone()).unwrap()).is_err());
        assert_eq!(verifier.replace_keys(&new.jwks()).unwrap(), 1);
        assert!(serving.verify(&new.sign(claims.clone()).unwrap()).is_ok());
        assert!(
            serving.verify(&old.sign(claims).unwrap()).is_err(),
            "the retired key is gone"
        );
        assert!(verifier.replace_keys("{\"keys\": []}").is_err());
    }

    #[test]
    fn an_rs256_token_of_a_2048_bit_key_names_its_principal() {
        let issuer = TestIssuer::new_rsa("https://sso.example", "r1").unwrap();
        let token = issuer
            .sign(json!({"sub": "carol@example.com", "aud": "flotilla", "exp": now() + 600, "flotilla_role": "approver"}))
            .unwrap();
        assert!(
            token.len() > 512,
            "an RS256 token is longer: {}",
            token.len()
        );
        let principal = verifier(&issuer).verify(&token).unwrap();
        assert_eq!(principal.name, "carol@example.com");
        assert_eq!(principal.role, Role::Approver);
    }

    #[test]
    fn foreign_expired_early_and_misaddressed_tokens_are_refused() {
        let issuer = TestIssuer::new("https://sso.example", "k1").unwrap();
        let verifier = verifier(&issuer);
        let claims = |extra: serde_json::Value| {
            let mut claims = json!({"sub": "bob", "aud": "flotilla", "exp": now() + 600, "flotilla_role": "admin"});
            for (key, value) in extra.as_object().unwrap() {
                claims[key] = value.clone();
            }
            claims
        };
        let foreign = TestIssuer::new("https://sso.example", "k1").unwrap();
        let refused = |token: String, why: &str| {
            let error = verifier.verify(&token).unwrap_err();
            assert!(error.contains(why), "{why}: {error}");
        };
        refused(foreign.sign(claims(json!({}))).unwrap(), "not valid");
        refused(
            issuer.sign(claims(json!({"exp": now() - 3600}))).unwrap(),
            "not valid",
        );
        refused(
            issuer.sign(claims(json!({"nbf": now() + 3600}))).unwrap(),
            "not valid",
        );
        refused(
            issuer.sign(claims(json!({"aud": "someone-else"}))).unwrap(),
            "not valid",
        );
        refused(
            issuer
                .sign(claims(json!({"flotilla_role": "root"})))
                .unwrap(),
            "names no flotilla role",
        );
        let other = TestIssuer::new("https://evil.example", "k1").unwrap();
        let mut token = other.sign(claims(json!({}))).unwrap();
        refused(token.clone(), "not valid");
        token.push('x');
        assert!(verifier.verify(&token).is_err());
        assert!(!OidcVerifier::looks_like_jwt("flt_0123"));
    }
}
