//! What the benches share: incompressible file contents that are the same on every run.

/// A xorshift byte stream from a fixed seed: data that neither gzip nor zstd can shrink, so layer and
/// hashing figures measure real work, and equal from run to run.
pub(crate) struct Noise(u64);

impl Noise {
    pub(crate) fn new() -> Noise {
        Noise(0x9e37_79b9_7f4a_7c15)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}
