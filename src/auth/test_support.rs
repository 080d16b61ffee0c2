//! Test keys, token minting and file helpers shared by the auth tests.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, SignatureAlgorithm};
use serde_json::{Value, json};

/// Issuer used by most tests.
pub(crate) const ISS: &str = "https://idp.example";
/// Audience used by most tests.
pub(crate) const AUD: &str = "hawser";

/// A fixed 2048-bit RSA test key (generated with openssl for these tests only).
pub(crate) const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEuwIBADANBgkqhkiG9w0BAQEFAASCBKUwggShAgEAAoIBAQCkiHgSjDg3xDFj
9ob4/QPL8Nkoxf/JlMCILiCh1z3Ju/7GTIuFpv4+QeThL6I28cDJm7YJuZSrPk02
Sx+MAotY9xpDTOLLTwgKDcEguymbB2ClC98/jOF+EDdpeWQYHT35MT7O20EX6ZsK
OqQFrULJBXL2LFAOHH89g+/EfWuED8Y78HGAm3wyPbLNWAy6emttyFsDrjE544us
rvexi35FchJ7O8AGNEhOhi8ktLeOllsuTnnj02kQKe2UrEz006ei4CeW/Jcjqf3T
iCJ4BOqcf3YGwXe0JCkJp0FHty3Wq9W6oc2JKENdu0nEQ7AJJviTClf1SAaaecpR
OvPCFmoDAgMBAAECgf9nfVbknOBeApXp4uPSJvG8Z+BgstSMds1OF+ZKFrFGppFv
ivL6eafG4quglyrlDx7AdAYShZYcICYz4dv8CkhS192azK9grBI3xsRX/M9ZWI2o
Z09IBULclIdqsfY9fd4JhHAn0Ts+1VXOQ/vnfdCWfA3NaGdT5qT9gEJ6sIFLiKjn
VKCZn4k42pIBDNyr5vK0gWmcxvmT4Tw2VKMs4JTbqQDFxM2YKxLLQFjhr+5/beM0
rEUs+WstizVAGNfB0ix0jYiWGGY9G9CY3KIhT5p+mA0GpkEcM9SL7fCVfn+gvJOw
eAs0UTci4zUhPq08Wm1GjtX0hlqNBFDkRIvLuR0CgYEA5YWxz5xtMqnvIlpmnu0F
si+kWZqW1bntRgHcsfmzIVrCQv/3ZphyhVtaItvrTKXiN2kRTFZLFYd/9Ax6SmTk
kQ+niqIE4gG9Rn9yaExm+Yv7KcHJtRSMXxmp72dii+3KHEpMT5jOhjXPX95jO27D
kv6L22Bgj/NvCszeYMhAyN8CgYEAt4N/xBttK/z0sMY3ocz/h6LdmeJfl/Rm13tw
NQP7bEobzIW8kFgJdAxvA0DSHjCK8uB5Bh+ij1OnWuBmZuCkIr2sO+hY0sU1uaaq
DCw8SbkHAgnJs6Mk4tPK4iaTyqKEgemeLX2co6Qkmc+oNelXBnpJPVii/QYlMSVU
uVVjr10CgYBqu30wWkG9aaC2jOtjxDz924HF2UmDIe7gu0TxzngqbpYfqgBWSVYY
BZ8ozrPg9NL5iXZt1UMdQ+GQj6zeo4RWoLz8jtNOdhiai/Gb5suMCDhH9sHh3yhX
oQuRNLZy86Uk+rf528lOR/+jSTtEDAIOfSh0X6EHz+A3WYWf4/+caQKBgAlvv6Ar
8N80MLjuWGn/ipxE6bRCCbxcmvU1qb1wKPuWi/tmXR3nCQVopkS6jpNy15JJrK99
7PQFzzNDGsDriEUpD7Q87GRaM7sKMPBTTf5Uf2HBcxfDqd/oGCSs6yieVsX/Z1zb
erSHekJWhUXQa+MvYpi++BKewEbYrpShKXEZAoGBANv2IjF2izN9Lf141sbDxKhc
b007/qTe/3IOsdA0VzDSLbbraTw0rFAKgnvJxu8c+Hr6qVFXOzYJm1C5L/Ln1B6C
InxMoqKXsv9QN+0x1GGHygQl+vvmJR4/AxcJI6jQZ1MV0NPT5iiZXCqIiBOh0c4U
vok/5ySHQ8tnDHeZ9EMZ
-----END PRIVATE KEY-----
";

/// Public half of [`RSA_PRIVATE_PEM`].
pub(crate) const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApIh4Eow4N8QxY/aG+P0D
y/DZKMX/yZTAiC4godc9ybv+xkyLhab+PkHk4S+iNvHAyZu2CbmUqz5NNksfjAKL
WPcaQ0ziy08ICg3BILspmwdgpQvfP4zhfhA3aXlkGB09+TE+zttBF+mbCjqkBa1C
yQVy9ixQDhx/PYPvxH1rhA/GO/BxgJt8Mj2yzVgMunprbchbA64xOeOLrK73sYt+
RXISezvABjRIToYvJLS3jpZbLk5549NpECntlKxM9NOnouAnlvyXI6n904gieATq
nH92BsF3tCQpCadBR7ct1qvVuqHNiShDXbtJxEOwCSb4kwpX9UgGmnnKUTrzwhZq
AwIDAQAB
-----END PUBLIC KEY-----
";

/// Modulus of [`RSA_PUBLIC_PEM`] in base64url, for JWKS tests (exponent is 65537, "AQAB").
pub(crate) const RSA_N: &str = "pIh4Eow4N8QxY_aG-P0Dy_DZKMX_yZTAiC4godc9ybv-xkyLhab-PkHk4S-iNvHAyZu2CbmUqz5NNksfjAKLWPcaQ0ziy08ICg3BILspmwdgpQvfP4zhfhA3aXlkGB09-TE-zttBF-mbCjqkBa1CyQVy9ixQDhx_PYPvxH1rhA_GO_BxgJt8Mj2yzVgMunprbchbA64xOeOLrK73sYt-RXISezvABjRIToYvJLS3jpZbLk5549NpECntlKxM9NOnouAnlvyXI6n904gieATqnH92BsF3tCQpCadBR7ct1qvVuqHNiShDXbtJxEOwCSb4kwpX9UgGmnnKUTrzwhZqAw";

/// A freshly generated EC key with a kid.
pub(crate) struct EcKey {
    pub(crate) pair: KeyPair,
    pub(crate) kid: String,
    alg: Algorithm,
}

impl EcKey {
    /// A P-256 key.
    pub(crate) fn new(kid: &str) -> Self {
        Self::generate(kid, &PKCS_ECDSA_P256_SHA256, Algorithm::ES256)
    }

    /// A P-384 key.
    pub(crate) fn p384(kid: &str) -> Self {
        Self::generate(kid, &PKCS_ECDSA_P384_SHA384, Algorithm::ES384)
    }

    fn generate(kid: &str, curve: &'static SignatureAlgorithm, alg: Algorithm) -> Self {
        Self {
            pair: KeyPair::generate_for(curve).expect("generate EC key"),
            kid: kid.to_owned(),
            alg,
        }
    }

    /// SPKI PEM of the public key.
    pub(crate) fn public_pem(&self) -> String {
        self.pair.public_key_pem()
    }

    /// The public key as a JWK with this kid.
    pub(crate) fn jwk(&self) -> Value {
        let raw = self.pair.public_key_raw();
        let half = (raw.len() - 1) / 2;
        let crv = if half == 32 { "P-256" } else { "P-384" };
        json!({
            "kty": "EC", "crv": crv, "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..1 + half]),
            "y": URL_SAFE_NO_PAD.encode(&raw[1 + half..]),
        })
    }

    /// Sign `claims` with this key's algorithm and kid.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_with(Some(&self.kid), claims)
    }

    /// Sign `claims` with an explicit (or no) kid.
    pub(crate) fn sign_with(&self, kid: Option<&str>, claims: &Value) -> String {
        sign(
            self.alg,
            kid,
            claims,
            &EncodingKey::from_ec_der(&self.pair.serialize_der()),
        )
    }
}

/// Sign `claims` with `key` and `alg`, putting `kid` in the header.
pub(crate) fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign token")
}

/// Sign `claims` with the fixed RSA key.
pub(crate) fn sign_rsa(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    sign(
        alg,
        kid,
        claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("RSA key"),
    )
}

/// A token from raw header and payload JSON and raw signature bytes.
pub(crate) fn raw_token(header: &Value, payload: &Value, signature: &[u8]) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(header),
        part(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Valid claims for `sub`, expiring in five minutes.
pub(crate) fn claims(sub: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "exp": now() + 300, "iat": now()})
}

/// `base` with `changes` merged in (a null value removes the claim).
pub(crate) fn with(base: Value, changes: Value) -> Value {
    let (Value::Object(mut base), Value::Object(changes)) = (base, changes) else {
        panic!("objects expected");
    };
    for (k, v) in changes {
        if v.is_null() {
            base.remove(&k);
        } else {
            base.insert(k, v);
        }
    }
    Value::Object(base)
}

/// Write `contents` to a new file in `dir` and return its path.
pub(crate) fn write_file(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}
