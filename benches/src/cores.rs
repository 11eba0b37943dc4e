//! How the generators split the machine between the services and themselves.

/// Half the machine's cores, at least one: the default share of the services and of the
/// generator, as if they ran on separate machines. With all cores each, the two runtimes contend
/// for the same cores and every request waits in the run queue.
pub fn half_the_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
