//! Look inside a JWT: decode its payload. No signature check: this is for
//! reading claims, never for trusting them.

use base64::Engine as _;

/// The claims (payload) of a compact JWT, as JSON.
pub fn decode_payload(token: &str) -> anyhow::Result<serde_json::Value> {
    let mut parts = token.trim().split('.');
    let (Some(_header), Some(payload), Some(_sig)) =
        (parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("not a JWT: expected header.payload.signature");
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = engine
        .decode(payload.trim_end_matches('='))
        .map_err(|e| anyhow::anyhow!("JWT payload is not base64url: {e}"))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The signature of a compact JWT, decoded.
pub fn signature_bytes(token: &str) -> anyhow::Result<Vec<u8>> {
    let sig = token
        .trim()
        .rsplit_once('.')
        .map(|(_, s)| s)
        .ok_or_else(|| anyhow::anyhow!("not a JWT: no signature part"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|e| anyhow::anyhow!("JWT signature is not base64url: {e}"))
}

/// A copy of `token` whose signature decodes to different bytes (one bit
/// of its middle byte flipped), so no verifier can accept it. Flipping a
/// base64 *character* is not enough: the last character of an ES256
/// signature carries padding bits, and changing only those decodes to the
/// same signature. A token whose signature cannot be decoded is returned
/// with one more character, which no verifier accepts either.
pub fn corrupt(token: &str) -> String {
    let token = token.trim();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Some((signed, _)) = token.rsplit_once('.') else {
        return format!("{token}A");
    };
    match signature_bytes(token) {
        Ok(mut sig) if !sig.is_empty() => {
            let i = sig.len() / 2;
            sig[i] ^= 0x01;
            format!("{signed}.{}", engine.encode(sig))
        }
        _ => format!("{token}A"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_payload() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload =
            engine.encode(br#"{"sub":"system:serviceaccount:p:a","iat":1}"#);
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        let claims = decode_payload(&token).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:p:a");
        assert!(decode_payload("nope").is_err());
    }

    #[test]
    fn corrupt_changes_signature_only() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let t = format!("aaa.bbb.{}", engine.encode([1u8, 2, 3, 4, 5, 6]));
        let c = corrupt(&t);
        assert_ne!(c, t);
        assert!(c.starts_with("aaa.bbb."));
        assert_eq!(c.len(), t.len());
        // A signature that is not base64url still comes back refused-looking.
        assert_ne!(corrupt("aaa.bbb.c"), "aaa.bbb.c");
    }

    #[test]
    fn corrupt_always_changes_the_signed_bytes() {
        // An ES256 signature is 64 bytes: 86 base64url characters, the
        // last of which holds 2 data bits and 4 padding bits. Whatever the
        // signature's bytes (and so its last character), the corrupted one
        // decodes to different bytes.
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for last in 0..=255u8 {
            let mut sig = [7u8; 64];
            sig[63] = last;
            let token = format!("h.p.{}", engine.encode(sig));
            let bad = corrupt(&token);
            assert_ne!(signature_bytes(&bad).unwrap(), sig.to_vec(), "{token}");
            assert_eq!(bad.len(), token.len());
        }
    }
}
