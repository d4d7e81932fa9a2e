//! Checks credentials against a registry the way `docker login` does, before they are kept:
//! `GET /v2/`; a `Basic` challenge is answered with the credentials on `/v2/` itself, a
//! `Bearer` challenge by asking its realm for a token (`service`, `account`) with them.

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;

use super::credentials::Credential;
use super::transport::{certificate_failure, root_cause, Transport, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("login to {registry}: wrong username or password (the registry refused them)")]
    Refused { registry: String },
    #[error("login to {registry}: TLS certificate not trusted ({reason}); {hint}")]
    Untrusted {
        registry: String,
        reason: String,
        hint: String,
    },
    #[error("login to {registry}: cannot reach {url}: {reason}")]
    Unreachable {
        registry: String,
        url: String,
        reason: String,
    },
    #[error("login to {registry}: {url} answered {status}")]
    Status {
        registry: String,
        url: String,
        status: StatusCode,
    },
    #[error("login to {registry}: unsupported authentication challenge {challenge:?}")]
    Challenge { registry: String, challenge: String },
}

/// An authentication challenge: its scheme and parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// `Scheme k="v", k2=v2` (RFC 7235, one challenge).
fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, mut rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let value;
        if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &q[end?..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            value = after[..end].trim().to_string();
            rest = &after[end..];
        }
        params.push((key.trim().to_string(), value));
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// Whether `cred` logs in to `registry`; `Ok` also when the registry asks for nothing.
pub async fn verify(
    transport: &Transport,
    registry: &str,
    cred: &Credential,
) -> Result<(), LoginError> {
    let endpoint = transport.endpoint(registry).await?;
    let client = endpoint.http_client()?;
    let send_err = |url: &str, e: reqwest::Error| match certificate_failure(&e) {
        Some(reason) => LoginError::Untrusted {
            registry: registry.to_string(),
            reason,
            hint: transport.trust_hint(registry),
        },
        None => LoginError::Unreachable {
            registry: registry.to_string(),
            url: url.to_string(),
            reason: root_cause(&e),
        },
    };
    let status_err = |url: &str, status| match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => LoginError::Refused {
            registry: registry.to_string(),
        },
        status => LoginError::Status {
            registry: registry.to_string(),
            url: url.to_string(),
            status,
        },
    };
    let v2 = format!("{}/v2/", endpoint.base_url());
    let first = client.get(&v2).send().await.map_err(|e| send_err(&v2, e))?;
    if first.status().is_success() {
        return Ok(());
    }
    if first.status() != StatusCode::UNAUTHORIZED {
        return Err(status_err(&v2, first.status()));
    }
    let header = first
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let challenge = parse_challenge(&header).ok_or_else(|| LoginError::Challenge {
        registry: registry.to_string(),
        challenge: header.clone(),
    })?;
    let (url, req) = match challenge.scheme.to_ascii_lowercase().as_str() {
        "basic" => (v2.clone(), client.get(&v2)),
        "bearer" => {
            let realm = challenge
                .param("realm")
                .ok_or_else(|| LoginError::Challenge {
                    registry: registry.to_string(),
                    challenge: header.clone(),
                })?;
            let mut query = vec![("account", cred.username.as_str())];
            if let Some(s) = challenge.param("service") {
                query.push(("service", s));
            }
            (realm.to_string(), client.get(realm).query(&query))
        }
        _ => {
            return Err(LoginError::Challenge {
                registry: registry.to_string(),
                challenge: header,
            })
        }
    };
    let answer = req
        .basic_auth(&cred.username, Some(&cred.secret))
        .send()
        .await
        .map_err(|e| send_err(&url, e))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(status_err(&url, answer.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("Service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "Basic");
        assert_eq!(b.param("realm"), Some("Registry Realm"));
        let t = parse_challenge("Bearer realm=https://x/token, service=x").unwrap();
        assert_eq!(t.param("realm"), Some("https://x/token"));
        assert_eq!(t.param("service"), Some("x"));
        assert_eq!(parse_challenge("Basic").unwrap().params, vec![]);
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert!(parse_challenge("Bearer novalue").is_none());
    }
}
