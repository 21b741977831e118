//! Library target of the eBPF crate: the runtime items every program object needs
//! ([`program_runtime!`]). It also lets `tracer`'s build script depend on the package and be
//! rebuilt when it changes; the programs are in the `tracer` and `policy-stub` binary targets.
#![no_std]

/// What every eBPF object of this crate needs once: a panic handler (never reached: the
/// verifier rejects any path to it) and the license section (GPL-compatible, for the helpers
/// the programs call). Expanded in each binary target, so it is part of that object.
#[macro_export]
macro_rules! program_runtime {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            // SAFETY: eBPF programs cannot panic; the verifier rejects any path that would
            // reach here.
            unsafe { core::hint::unreachable_unchecked() }
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
