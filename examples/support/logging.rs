//! The examples' `tracing` subscriber: moestream's events (load phases, I/O errors, device
//! loss; with `RUST_LOG=moestream=trace` also every session pass and expert-cache miss)
//! printed to stderr, filtered by `RUST_LOG` (default: warnings and errors).

/// Installs the subscriber; call once at the start of `main`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
