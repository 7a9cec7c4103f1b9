//! What makes a scan-creation body valid, and the message for each way it is not.

use std::fmt;

use http::header;
use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, SeqAccess, Visitor},
};

use crate::{error::NatError, plan::ScanKind};

/// Why a scan body was refused. (Public in a private module: the read future names it.)
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    ContentType,
    TooLarge(usize),
    Unreadable,
    Empty,
    Malformed,
    NotObject,
    Duplicate(String),
    MissingUrl,
    BadUrl,
    BadMode,
    /// A gRPC scan creation whose kind is not known: no reader of its message, no
    /// `ScanKind` from the server.
    UnknownKind,
    /// A gRPC scan creation whose body is not one uncompressed gRPC message.
    GrpcMessage,
    /// A request to a gRPC method that is not gRPC.
    NotGrpc,
    /// A gRPC scan creation over HTTP/1.x, whose client would not see the final status.
    GrpcNeedsHttp2,
    /// The server's reader of gRPC scan messages refused the message with this error.
    Refused(NatError),
}

impl Invalid {
    pub(super) fn into_error(self) -> NatError {
        NatError::invalid_request(match self {
            Invalid::Refused(error) => return error,
            Invalid::UnknownKind => "The scan's mode could not be determined.".to_owned(),
            Invalid::GrpcMessage => "Malformed gRPC message in request body.".to_owned(),
            Invalid::NotGrpc => "Content-Type must be application/grpc.".to_owned(),
            Invalid::GrpcNeedsHttp2 => "gRPC calls need HTTP/2.".to_owned(),
            Invalid::ContentType => "Content-Type must be application/json.".to_owned(),
            Invalid::TooLarge(limit) => {
                format!("Request body too large: the limit is {limit} bytes.")
            }
            Invalid::Unreadable => "The request body could not be read.".to_owned(),
            Invalid::Empty => "Request body is empty; expected a JSON object.".to_owned(),
            Invalid::Malformed => "Malformed JSON in request body.".to_owned(),
            Invalid::NotObject => "Request body must be a JSON object.".to_owned(),
            Invalid::Duplicate(name) => format!(
                "Duplicate field in request body: {}.",
                // Echo at most a short, printable name.
                name.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            ),
            Invalid::MissingUrl => "Missing required field: url.".to_owned(),
            Invalid::BadUrl => "Invalid field: url must be a non-empty string.".to_owned(),
            Invalid::BadMode => {
                r#"Invalid field: mode must be one of "functional", "security", "full"."#.to_owned()
            }
        })
    }

    pub(super) fn reason(&self) -> &'static str {
        match self {
            Invalid::ContentType => "content type",
            Invalid::TooLarge(_) => "body too large",
            Invalid::Unreadable => "body unreadable",
            Invalid::Empty => "empty body",
            Invalid::Malformed => "malformed JSON",
            Invalid::NotObject => "not an object",
            Invalid::Duplicate(_) => "duplicate field",
            Invalid::MissingUrl => "missing url",
            Invalid::BadUrl => "invalid url",
            Invalid::BadMode => "invalid mode",
            Invalid::UnknownKind => "gRPC scan creation of unknown kind",
            Invalid::GrpcMessage => "malformed gRPC message",
            Invalid::NotGrpc => "not gRPC on a gRPC method",
            Invalid::GrpcNeedsHttp2 => "gRPC over HTTP/1.x",
            Invalid::Refused(_) => "the server's gRPC scan reader refused",
        }
    }
}

/// The top-level members of a scan body, checked in one pass.
#[derive(Default)]
struct Fields {
    url: Option<Result<(), Invalid>>,
    mode: Option<Result<ScanKind, Invalid>>,
    duplicate: Option<String>,
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.clone().into_owned()) && fields.duplicate.is_none() {
                fields.duplicate = Some(key.clone().into_owned());
            }
            match &*key {
                "url" => {
                    let value = map.next_value::<serde_json::Value>()?;
                    fields.url = Some(match value.as_str() {
                        Some(s) if !s.is_empty() => Ok(()),
                        _ => Err(Invalid::BadUrl),
                    });
                }
                "mode" => {
                    let value = map.next_value::<serde_json::Value>()?;
                    fields.mode = Some(
                        value
                            .as_str()
                            .and_then(ScanKind::from_mode)
                            .ok_or(Invalid::BadMode),
                    );
                }
                _ => {
                    map.next_value::<AnyValue>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// Any JSON value, read as `serde_json::Value` reads it (the same nesting limit, 128 levels;
/// the same number range; the same string escapes) without keeping any of it: so a body this
/// validator accepts is one a handler's `serde_json` accepts too. (`IgnoredAny` would skip
/// deeper nesting and numbers out of range, which the handler's parser then refuses.)
struct AnyValue;

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyVisitor)
    }
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = AnyValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_i64<E>(self, _: i64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_u64<E>(self, _: u64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_f64<E>(self, _: f64) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_str<E>(self, _: &str) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_unit<E>(self) -> Result<AnyValue, E> {
        Ok(AnyValue)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue, A::Error> {
        while seq.next_element::<AnyValue>()?.is_some() {}
        Ok(AnyValue)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
        while map.next_key::<AnyValue>()?.is_some() {
            map.next_value::<AnyValue>()?;
        }
        Ok(AnyValue)
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Checks a scan-creation body as [`ValidateScanRequest`](super::ValidateScanRequest) does (without the size limit and
/// the content type) and returns its kind, or the 400 it would answer. Never panics, for any
/// bytes.
///
/// ```
/// use tower_nat::{plan::ScanKind, scan_request::validate_scan_body};
///
/// assert_eq!(validate_scan_body(br#"{"url":"https://e.example"}"#, ScanKind::Functional), Ok(ScanKind::Functional));
/// let error = validate_scan_body(b"[]", ScanKind::Functional).unwrap_err();
/// assert_eq!(error.message(), "Request body must be a JSON object.");
/// ```
pub fn validate_scan_body(body: &[u8], default_kind: ScanKind) -> Result<ScanKind, NatError> {
    validate(body, default_kind).map_err(Invalid::into_error)
}

/// Checks a scan-creation body and returns its kind.
pub(super) fn validate(body: &[u8], default_kind: ScanKind) -> Result<ScanKind, Invalid> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Invalid::Empty);
    }
    // serde_json skips ignored members without checking their UTF-8: check it all first, so
    // a body this layer accepts is one any JSON parser accepts (found by fuzzing).
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Invalid::Malformed);
    };
    let fields: Fields = match serde_json::from_str(text) {
        Ok(fields) => fields,
        Err(e) if e.is_data() => return Err(Invalid::NotObject),
        Err(_) => return Err(Invalid::Malformed),
    };
    if let Some(name) = fields.duplicate {
        return Err(Invalid::Duplicate(name));
    }
    match fields.url {
        None => return Err(Invalid::MissingUrl),
        Some(Err(e)) => return Err(e),
        Some(Ok(())) => {}
    }
    fields.mode.unwrap_or(Ok(default_kind))
}

pub(super) fn content_type_ok(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && {
            let (head, tail) = essence.split_at(essence.len() - 5);
            tail.eq_ignore_ascii_case("+json") && head.starts_with("application/")
        })
}

pub(super) fn declared_too_large(headers: &http::HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let f = ScanKind::Functional;
        let cases: &[(&[u8], Result<ScanKind, Invalid>)] = &[
            (br#"{"url":"https://a.example"}"#, Ok(ScanKind::Functional)),
            (
                br#"{"url":"https://a.example","mode":"security"}"#,
                Ok(ScanKind::Security),
            ),
            (
                br#" {"mode":"full","url":"u","extra":[1,{"x":null}]} "#,
                Ok(ScanKind::Full),
            ),
            (b"", Err(Invalid::Empty)),
            (b"  \n", Err(Invalid::Empty)),
            (b"{", Err(Invalid::Malformed)),
            (b"[]", Err(Invalid::NotObject)),
            (br#""x""#, Err(Invalid::NotObject)),
            (b"null", Err(Invalid::NotObject)),
            (br#"{"url":1}"#, Err(Invalid::BadUrl)),
            (br#"{"url":""}"#, Err(Invalid::BadUrl)),
            (br#"{"mode":"security"}"#, Err(Invalid::MissingUrl)),
            (br#"{"url":"u","mode":"deep"}"#, Err(Invalid::BadMode)),
            (br#"{"url":"u","mode":null}"#, Err(Invalid::BadMode)),
            (
                br#"{"url":"u","url":"v"}"#,
                Err(Invalid::Duplicate("url".into())),
            ),
            (b"{\"url\":\"\xff\"}", Err(Invalid::Malformed)),
            (
                b"{\"url\":\"u\",\"mode\":\"fu\xecl\"}",
                Err(Invalid::Malformed),
            ),
            (b"{\"url\":\"u\",\"x\":\"\xec\"}", Err(Invalid::Malformed)),
            (br#"{"url":"u"} x"#, Err(Invalid::Malformed)),
        ];
        for (body, expected) in cases {
            assert_eq!(
                &validate(body, f),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Nesting deeper than serde_json's limit (128 levels, the object included) is
        // refused wherever it is, as a handler's `serde_json::Value` would refuse it; it
        // never overflows the stack. So are numbers out of `f64`'s range.
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let at = |n: usize| format!("{{\"url\":\"u\",\"x\":{}}}", deep(n));
        for n in 100..140 {
            let body = at(n);
            let parsed = serde_json::from_str::<serde_json::Value>(&body).is_ok();
            assert_eq!(validate(body.as_bytes(), f).is_ok(), parsed, "{n} levels");
        }
        assert!(validate(at(100).as_bytes(), f).is_ok());
        assert_eq!(validate(at(140).as_bytes(), f), Err(Invalid::Malformed));
        let ignored = at(500_000);
        assert_eq!(validate(ignored.as_bytes(), f), Err(Invalid::Malformed));
        for number in ["1e999999", "-1e400", "1e309"] {
            let body = format!("{{\"url\":\"u\",\"x\":[{number}]}}");
            assert_eq!(
                validate(body.as_bytes(), f),
                Err(Invalid::Malformed),
                "{body}"
            );
        }
        let tiny = br#"{"url":"u","x":1e-999999,"y":0e999999,"z":"\ud83d\ude00"}"#;
        assert_eq!(validate(tiny, f), Ok(ScanKind::Functional));
        assert_eq!(
            validate(br#"{"url":"u","x":"\ud800"}"#, f),
            Err(Invalid::Malformed)
        );
        let in_url = format!("{{\"url\":{}}}", deep(500_000));
        assert_eq!(validate(in_url.as_bytes(), f), Err(Invalid::Malformed));
        let unclosed = format!("{{\"url\":\"u\",\"x\":{}}}", "[".repeat(500_000));
        assert_eq!(validate(unclosed.as_bytes(), f), Err(Invalid::Malformed));
    }

    #[test]
    fn content_types() {
        let ok = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            content_type_ok(&h)
        };
        assert!(content_type_ok(&http::HeaderMap::new()));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(ok("application/vnd.nat+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!ok("+json"));
    }
}
