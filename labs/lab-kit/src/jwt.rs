//! Look inside a JWT: decode its payload. No signature check: this is for
//! reading claims, never for trusting them.

use base64::Engine as _;

/// The claims (payload) of a compact JWT, as JSON.
pub fn decode_payload(token: &str) -> anyhow::Result<serde_json::Value> {
    let mut parts = token.trim().split('.');
    let (Some(_header), Some(payload), Some(_sig)) = (parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("not a JWT: expected header.payload.signature");
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = engine
        .decode(payload.trim_end_matches('='))
        .map_err(|e| anyhow::anyhow!("JWT payload is not base64url: {e}"))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// A copy of `token` with its signature corrupted (still well formed).
pub fn corrupt(token: &str) -> String {
    let token = token.trim();
    let mut chars: Vec<char> = token.chars().collect();
    // Flip a character in the middle of the signature.
    if let Some(dot) = token.rfind('.') {
        let i = dot + 1 + (chars.len() - dot - 1) / 2;
        if let Some(c) = chars.get_mut(i) {
            *c = if *c == 'A' { 'B' } else { 'A' };
        }
    }
    chars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_payload() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = engine.encode(br#"{"sub":"system:serviceaccount:p:a","iat":1}"#);
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        let claims = decode_payload(&token).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:p:a");
        assert!(decode_payload("nope").is_err());
    }

    #[test]
    fn corrupt_changes_signature_only() {
        let t = "aaa.bbb.cccccc";
        let c = corrupt(t);
        assert_ne!(c, t);
        assert!(c.starts_with("aaa.bbb."));
        assert_eq!(c.len(), t.len());
    }
}
