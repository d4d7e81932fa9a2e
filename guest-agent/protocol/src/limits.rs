//! Hard caps on what one peer may ask of the other.
//!
//! The frame cap bounds memory per message; the per-field caps exist because a 4 MiB frame of
//! tiny entries would still make the agent allocate and apply millions of things, and because a
//! clear "too many env entries" beats a failure deep inside `execve`. Where the kernel has a
//! limit of its own we use it, so anything we accept the kernel can also take.

/// Largest payload of one frame (4 MiB). A length prefix above this is rejected before any
/// allocation. Big enough for a CreateContainer with a full seccomp profile and thousands of
/// env entries; stdio never travels in frames, so nothing legitimate comes close.
pub const MAX_FRAME_LEN: usize = 4 << 20;

/// Container and exec ids become guest paths and log keys: short, and a safe charset.
pub const MAX_ID_LEN: usize = 128;

/// Most entries in `args`.
pub const MAX_ARGS: usize = 4096;

/// Most entries in `env`.
pub const MAX_ENV: usize = 4096;

/// Longest single arg or env entry: the kernel's `MAX_ARG_STRLEN` (32 pages).
pub const MAX_ARG_LEN: usize = 128 << 10;

/// Longest path: `PATH_MAX`.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest hostname: `HOST_NAME_MAX`.
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Longest short token: mount options, fs types, sysctl keys, disk serials, virtio-fs tags,
/// capability-like names, seccomp syscall names and flags.
pub const MAX_TOKEN_LEN: usize = 256;

/// Most entries in a network list: interfaces, addresses, routes, DNS servers, hosts lines.
pub const MAX_NET_ENTRIES: usize = 64;

/// Longest sysctl value.
pub const MAX_SYSCTL_VALUE_LEN: usize = 4096;

/// Most entries in a generic list: mounts, options, masked/readonly paths, sysctls,
/// additional gids.
pub const MAX_LIST: usize = 1024;

/// Most read-only layers under one overlay. Docker's own cap is 127; 128 leaves one to spare.
pub const MAX_LAYERS: usize = 128;

/// Most seccomp rules, and most syscall names within one rule (Docker's default profile has
/// about 400 names in its biggest rule).
pub const MAX_SECCOMP_RULES: usize = 1024;

/// Longest error message a peer may send back: enough for a useful explanation, not a dump.
pub const MAX_ERROR_MESSAGE_LEN: usize = 64 << 10;

/// Fewest bytes of host entropy a `Restored` may carry: 256 bits, a full ChaCha20 key's
/// worth, so a clone's CRNG is never reseeded from less than it needs to be unpredictable.
pub const MIN_RESTORE_ENTROPY: usize = 32;

/// Most bytes of host entropy a `Restored` may carry: eight keys' worth is already more than
/// the CRNG can use; the cap bounds the buffer the agent hands to the kernel.
pub const MAX_RESTORE_ENTROPY: usize = 256;

/// Most NIC MAC rewrites in one `Restored`: a VM has a handful of NICs, not dozens.
pub const MAX_RESTORE_MACS: usize = 16;

/// Highest signal number Linux knows (`SIGRTMAX`).
pub const MAX_SIGNAL: i32 = 64;
