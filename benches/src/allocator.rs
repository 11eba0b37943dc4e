//! The generators run the services in-process with the allocator the `consentgate` binary uses
//! (see its `main.rs`), so what they measure is what production runs.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
