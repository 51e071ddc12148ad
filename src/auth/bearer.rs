//! The token of an HTTP request: `Authorization: Bearer <jwt>` (also the
//! admin view's token), else the `token` query parameter.

/// The credentials of an `Authorization` header value of the `Bearer`
/// scheme, in any case (RFC 9110, 11.1: the scheme is case-insensitive),
/// blanks around them trimmed; `None` for any other scheme.
pub fn bearer_credentials(authorization: &[u8]) -> Option<&[u8]> {
    let value = authorization.trim_ascii();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, credentials) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| credentials.trim_ascii())
}

/// The token of a WebSocket upgrade request: `Authorization: Bearer <jwt>`,
/// else the `token` query parameter.
pub fn token_of_request(headers: &hyper::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(hyper::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = bearer_credentials(value.as_bytes())?;
        return std::str::from_utf8(token).ok().map(str::to_owned);
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_requests() {
        let mut headers = hyper::HeaderMap::new();
        assert_eq!(
            token_of_request(&headers, Some("a=1&token=xyz")),
            Some("xyz".into())
        );
        assert_eq!(token_of_request(&headers, None), None);
        headers.insert(hyper::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(
            token_of_request(&headers, Some("token=xyz")),
            Some("abc".into())
        );
        headers.insert(hyper::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(token_of_request(&headers, None), None);
        headers.insert(hyper::header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(token_of_request(&headers, None), Some("abc".into()));
    }
}
