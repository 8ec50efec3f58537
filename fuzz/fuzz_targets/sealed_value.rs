//! The stored ciphertext format: arbitrary bytes never open (or panic), and
//! anything sealed opens to itself and only under its own binding (record
//! version included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenvault::vault::{sealed_key_id, Binding, DataKey, Field};

fuzz_target!(|data: &[u8]| {
    let key = DataKey::from_bytes(uuid_from(data), &[7u8; 32]);
    let binding = Binding {
        tenant_id: "t",
        user_id: "u",
        record: "r",
        field: Field::RefreshToken,
        version: 0,
    };
    let _ = sealed_key_id(data);
    assert!(key.open(&binding, data).is_err(), "arbitrary bytes must not authenticate");
    let sealed = key.seal(&binding, data).expect("seal");
    let opened = key.open(&binding, &sealed).expect("open");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&opened), data);
    let other = Binding { record: "s", ..binding };
    assert!(key.open(&other, &sealed).is_err());
    let older = Binding { version: -1, ..binding };
    assert!(key.open(&older, &sealed).is_err(), "a value opens only at its own record version");
});

fn uuid_from(data: &[u8]) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    for (slot, byte) in bytes.iter_mut().zip(data) {
        *slot = *byte;
    }
    uuid::Uuid::from_bytes(bytes)
}
