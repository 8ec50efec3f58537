//! The OAuth callback's query string: any input is parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(params) = tokenvault::api::http::callback_params(Some(&text)) {
        assert!(!params.state.is_empty());
        assert!(text.len() <= 8192);
    }
});
