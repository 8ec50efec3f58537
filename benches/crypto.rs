//! Envelope-encryption costs on the token path: sealing and opening one
//! access token under a connection's data key, and unwrapping a data key
//! under the key-encryption key (what a data-key cache miss costs in CPU),
//! with the file keyring and, when `moto_server` is on PATH
//! (`scripts/install-moto` prints where), with AWS KMS on moto over loopback,
//! and, when SoftHSM2 is installed (`scripts/install-softhsm`), with the
//! PKCS#11 keyring on a SoftHSM2 token.
//!
//! `PATH="$(scripts/install-moto):$PATH" cargo bench --bench crypto`

// criterion_group! generates an undocumented public function; the moto
// harness is the test suite's own (tests/it/support/kms.rs), which fails
// loudly with unwrap/panic where it cannot set moto up.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support/kms.rs"]
#[allow(dead_code)]
mod moto;

#[path = "../tests/it/support/hsm.rs"]
#[allow(dead_code)]
mod hsm;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use secrecy::SecretString;
use tokenvault::vault::{Binding, DataKey, Field, Keyring, LocalKeyring, VaultError};
use uuid::Uuid;
use zeroize::Zeroizing;

/// A token of the size Google and Microsoft hand out (Microsoft's JWTs are
/// longer, ~1.5–2.5 KB; both sizes are measured).
const TOKENS: [(&str, usize); 2] = [("opaque_200B", 200), ("jwt_2KB", 2048)];

fn binding(record: &str) -> Binding<'_> {
    Binding {
        tenant_id: "acme",
        user_id: "user-42",
        record,
        field: Field::AccessToken,
        version: 0,
    }
}

/// Stops the run when a benchmark's setup fails (each operation is tried
/// once before it is measured, so the measured loops cannot fail unseen).
fn or_exit(benchmark: &str, result: Result<(), VaultError>) {
    if let Err(error) = result {
        eprintln!("crypto bench {benchmark}: {error}");
        std::process::exit(1);
    }
}

fn seal_and_open(c: &mut Criterion) {
    or_exit("token", try_seal_and_open(c));
}

fn try_seal_and_open(c: &mut Criterion) -> Result<(), VaultError> {
    let (key, _bytes) = DataKey::generate();
    let record = Uuid::new_v4().to_string();
    let mut group = c.benchmark_group("token");
    for (name, size) in TOKENS {
        let token: String = "x".repeat(size);
        let secret = SecretString::from(token.clone());
        let sealed = key.seal_str(&binding(&record), &secret)?;
        key.open_string(&binding(&record), &sealed)?;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("seal/{name}"), |b| {
            b.iter(|| key.seal_str(black_box(&binding(&record)), black_box(&secret)))
        });
        group.bench_function(format!("open/{name}"), |b| {
            b.iter(|| key.open_string(black_box(&binding(&record)), black_box(&sealed)))
        });
    }
    group.finish();
    Ok(())
}

fn unwrap_data_key(c: &mut Criterion) {
    or_exit("data_key", try_unwrap_data_key(c));
}

fn try_unwrap_data_key(c: &mut Criterion) -> Result<(), VaultError> {
    let runtime = runtime()?;
    let kek: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
    let keyring = LocalKeyring::new(vec![("kek-1".to_owned(), kek)], "kek-1")?;
    let mut group = c.benchmark_group("data_key");
    bench_keyring(&mut group, &runtime, "file", &keyring)?;
    if moto::Moto::available() {
        let server = moto::Moto::start();
        let kms = runtime.block_on(async {
            let arn = server.create_key().await;
            let config = server.keys_config(&arn, &[]);
            let kms = config.kms.as_ref().ok_or(VaultError::Crypto("no KMS configuration"))?;
            tokenvault::vault::KmsKeyring::connect(kms, &[]).await
        })?;
        bench_keyring(&mut group, &runtime, "aws_kms_moto", &kms)?;
    } else {
        eprintln!(
            "crypto bench: moto_server is not on PATH; the AWS KMS keyring is not measured (scripts/install-moto)"
        );
    }
    if hsm::available() {
        let token = hsm::SoftHsm::new();
        let ring = runtime.block_on(async {
            token.create_key("bench-kek").await;
            tokenvault::vault::Pkcs11Keyring::connect(&token.pkcs11_config("bench-kek", &[]), &[]).await
        })?;
        bench_keyring(&mut group, &runtime, "pkcs11_softhsm2", &ring)?;
    } else {
        eprintln!(
            "crypto bench: SoftHSM2 is not installed; the PKCS#11 keyring is not measured (scripts/install-softhsm)"
        );
    }
    group.finish();
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, VaultError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| VaultError::Crypto("no tokio runtime"))
}

/// Unwrap, and generate + wrap, through one keyring (`name` prefixes the benchmark ids).
fn bench_keyring(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    keyring: &dyn Keyring,
) -> Result<(), VaultError> {
    let (key, bytes) = DataKey::generate();
    let (kek_id, wrapped) = runtime.block_on(keyring.wrap(key.id(), &bytes))?;
    runtime.block_on(keyring.unwrap(&kek_id, key.id(), &wrapped))?;
    group.bench_function(format!("{name}/unwrap"), |b| {
        b.to_async(runtime)
            .iter(|| keyring.unwrap(black_box(&kek_id), black_box(key.id()), black_box(&wrapped)))
    });
    group.bench_function(format!("{name}/generate_and_wrap"), |b| {
        b.to_async(runtime).iter(|| async {
            let (key, bytes) = DataKey::generate();
            keyring.wrap(key.id(), &bytes).await
        })
    });
    Ok(())
}

criterion_group!(benches, seal_and_open, unwrap_data_key);
criterion_main!(benches);
