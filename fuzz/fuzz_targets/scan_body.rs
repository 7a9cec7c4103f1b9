//! Arbitrary bytes as a scan-creation body: never a panic; either a scan kind for a JSON
//! object, or the `INVALID_REQUEST` envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_nat::{plan::ScanKind, scan_request::validate_scan_body};

fuzz_target!(|data: &[u8]| {
    match validate_scan_body(data, ScanKind::Functional) {
        Ok(_) => {
            // An accepted body is one JSON object (ignored members may nest deeper than
            // serde_json's recursion limit, so it is not re-parsed here).
            let text = std::str::from_utf8(data).expect("accepted bodies are UTF-8");
            let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
            assert!(trimmed.starts_with('{') && trimmed.ends_with('}'));
        }
        Err(error) => {
            assert_eq!(error.code(), "INVALID_REQUEST");
            let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
            assert_eq!(body["error"], "INVALID_REQUEST");
        }
    }
});
