//! A small assembler for classic BPF programs, as seccomp takes them: loads of `seccomp_data` words,
//! conditional jumps to labels, returns, and a binary search over sorted call numbers. The seccomp
//! profile (`seccomp`) is written with it.

/// A classic BPF program, as the kernel takes it.
pub type Filter = Vec<nix::libc::sock_filter>;

pub const BPF_LD_W_ABS: u16 = 0x20;
pub const BPF_JEQ: u16 = 0x15;
pub const BPF_JGE: u16 = 0x35;
pub const BPF_JSET: u16 = 0x45;
pub const BPF_JA: u16 = 0x05;
pub const BPF_RET_K: u16 = 0x06;

/// The assembler: jumps name labels, resolved by `finish`; a conditional jump whose target is beyond the
/// 255 instructions it reaches goes through an unconditional (32-bit) one.
#[derive(Default)]
pub struct Asm {
    code: Vec<(u16, u32, Target, Target)>,
    labels: std::collections::HashMap<String, usize>,
    fresh: usize,
}

#[derive(Clone)]
enum Target {
    Next,
    Label(String),
}

impl Asm {
    pub fn label(&mut self, name: &str) {
        self.labels.insert(name.to_string(), self.code.len());
    }
    pub fn load(&mut self, offset: u32) {
        self.code
            .push((BPF_LD_W_ABS, offset, Target::Next, Target::Next));
    }
    pub fn ret(&mut self, action: u32) {
        self.code
            .push((BPF_RET_K, action, Target::Next, Target::Next));
    }
    pub fn jump(&mut self, to: &str) {
        self.code
            .push((BPF_JA, 0, Target::Label(to.into()), Target::Next));
    }
    pub fn op(&mut self, code: u16, k: u32, yes: &str, no: &str) {
        let (yes, no) = (Target::Label(yes.into()), Target::Label(no.into()));
        self.code.push((code, k, yes, no));
    }
    pub fn jump_if(&mut self, k: u32, to: &str) {
        self.code
            .push((BPF_JEQ, k, Target::Label(to.into()), Target::Next));
    }
    pub fn jump_unless(&mut self, k: u32, to: &str) {
        self.code
            .push((BPF_JEQ, k, Target::Next, Target::Label(to.into())));
    }

    /// Answers `allow` for the numbers `sorted` (ascending) and `deny` for the rest: halves by `>=`
    /// down to runs of four equality tests.
    pub fn search(&mut self, sorted: &[u32], allow: u32, deny: u32) {
        if sorted.len() <= 4 {
            let found = self.new_label();
            for &nr in sorted {
                self.jump_if(nr, &found);
            }
            self.ret(deny);
            self.label(&found);
            self.ret(allow);
            return;
        }
        let (low, high) = sorted.split_at(sorted.len() / 2);
        let upper = self.new_label();
        let lower = self.new_label();
        self.op(BPF_JGE, high[0], &upper, &lower);
        self.label(&lower);
        self.search(low, allow, deny);
        self.label(&upper);
        self.search(high, allow, deny);
    }

    fn new_label(&mut self) -> String {
        self.fresh += 1;
        format!(".{}", self.fresh)
    }

    /// Resolves the labels (all forward, as BPF jumps are). A conditional jump reaches 255 instructions;
    /// one whose target is farther goes through a `JA` right after it. Adding those moves the targets of
    /// others, so the far ones are found again until none is new.
    pub fn finish(self) -> Result<Filter, String> {
        let n = self.code.len();
        let label = |t: &Target, from: usize| -> Result<Option<usize>, String> {
            let Target::Label(l) = t else { return Ok(None) };
            match self.labels.get(l) {
                Some(&to) if to > from => Ok(Some(to)),
                _ => Err(format!(
                    "BPF program: no label {l} after instruction {from}"
                )),
            }
        };
        let conditional = |code: u16| !matches!(code, BPF_JA | BPF_RET_K | BPF_LD_W_ABS);
        let mut far = vec![[false; 2]; n];
        let mut pos = vec![0usize; n + 1];
        loop {
            for i in 0..n {
                pos[i + 1] = pos[i] + 1 + far[i].iter().filter(|f| **f).count();
            }
            let mut changed = false;
            for (i, (code, _, yes, no)) in self.code.iter().enumerate() {
                if !conditional(*code) {
                    continue;
                }
                for (which, t) in [yes, no].into_iter().enumerate() {
                    if let Some(to) = label(t, i)?
                        && pos[to] - (pos[i] + 1) > 255
                        && !far[i][which]
                    {
                        far[i][which] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let insn = |code, jt, jf, k| nix::libc::sock_filter { code, jt, jf, k };
        let mut out = Filter::with_capacity(pos[n]);
        for (i, (code, k, yes, no)) in self.code.iter().enumerate() {
            let next = pos[i] + 1;
            if *code == BPF_JA {
                let to = label(yes, i)?.ok_or("BPF program: a jump without a target")?;
                out.push(insn(BPF_JA, 0, 0, (pos[to] - next) as u32));
                continue;
            }
            if !conditional(*code) {
                out.push(insn(*code, 0, 0, *k));
                continue;
            }
            // The JAs follow in the order yes, no; `Next` falls through past them.
            let jas = far[i].iter().filter(|f| **f).count();
            let mut slot = 0;
            let mut offset = |t: &Target, far: bool| -> Result<u8, String> {
                let off = match label(t, i)? {
                    None => jas,
                    Some(_) if far => {
                        slot += 1;
                        slot - 1
                    }
                    Some(to) => pos[to] - next,
                };
                u8::try_from(off).map_err(|_| "BPF program: a jump too far".to_string())
            };
            let jt = offset(yes, far[i][0])?;
            let jf = offset(no, far[i][1])?;
            out.push(insn(*code, jt, jf, *k));
            for (j, t) in [yes, no].into_iter().enumerate() {
                if far[i][j] {
                    let to = label(t, i)?.ok_or("BPF program: a jump without a target")?;
                    out.push(insn(BPF_JA, 0, 0, (pos[to] - (out.len() + 1)) as u32));
                }
            }
        }
        Ok(out)
    }
}
