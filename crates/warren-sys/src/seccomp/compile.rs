//! The default policy compiled to one classic BPF program: `seccomp/default.json` through
//! seccompiler, chained behind the guard and the search (see the `seccomp` module's
//! documentation). Pure functions of the policy's text, run by this crate's build script,
//! whose output the crate installs, and by the tests, which hold that output to a compile
//! of the same text and read the parts. Needs only `seccompiler` and `libc`: the build
//! script includes this file as a module of its own.

use seccompiler::{sock_filter, BpfProgram};

/// Why the policy's text could not be compiled: the build fails with it.
#[derive(Debug)]
pub enum CompileError {
    /// seccompiler refused the JSON.
    Seccompiler(seccompiler::Error),
    /// The JSON lacks a filter the policy is made of.
    MissingFilter(&'static str),
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Seccompiler(e) => write!(f, "compiling the seccomp policy: {e}"),
            Self::MissingFilter(name) => write!(f, "the seccomp policy has no filter named {name}"),
        }
    }
}

/// The x86-64 program of the policy `json` (seccompiler's JSON, with the filters `main`
/// and `clone3`): the guard, the search made from the rest, then `clone3` and `main`,
/// chained into one program.
pub fn compile(json: &[u8]) -> Result<BpfProgram, CompileError> {
    let mut map = seccompiler::compile_from_json(json, seccompiler::TargetArch::x86_64)
        .map_err(CompileError::Seccompiler)?;
    let mut take = |name: &'static str| map.remove(name).ok_or(CompileError::MissingFilter(name));
    let main = take("main")?;
    let clone3 = take("clone3")?;
    let rest = chain(vec![clone3, main]);
    let mut searched = fast_path(&rest);
    searched.extend(rest);
    Ok(chain(vec![guard_program(), searched]))
}

/// Syscalls missing from seccompiler 0.4's x86-64 table, refused with `EPERM` by the guard.
/// The reasons are those of their relatives in `default.json`.
pub const UNNAMED_EPERM: &[(&str, u32)] = &[
    // The mount API, as mount and open_tree; quotactl_fd as quotactl.
    ("mount_setattr", 442),
    ("quotactl_fd", 443),
    ("open_tree_attr", 467),
    // NUMA placement, as mbind.
    ("set_mempolicy_home_node", 450),
    // A process's own LSM attributes; Docker refuses them, and /proc/self/attr remains
    // for the programs that read them.
    ("lsm_get_self_attr", 459),
    ("lsm_set_self_attr", 460),
    ("lsm_list_modules", 461),
];

/// The first syscall number newer than the kernel this policy was reviewed on (Linux 6.18,
/// whose last is file_setattr, 469). A deny list would let such a call through unreviewed;
/// the guard answers `ENOSYS` instead, so programs take the path they take on an older
/// kernel until the call is reviewed (docs/seccomp.md).
pub const FIRST_UNREVIEWED: u32 = 470;
/// One program that runs `programs` in turn: each `RET ALLOW` of all but the last becomes
/// a jump to the first instruction of the next (a program's other verdicts stay the
/// answer). Only sound for programs whose non-allow verdicts no later program would make
/// more severe, as those of `compile` (see the module doc).
pub fn chain(programs: Vec<BpfProgram>) -> BpfProgram {
    use bpf::{JA, RET_K};
    let count = programs.len();
    let mut out = Vec::new();
    for (i, mut p) in programs.into_iter().enumerate() {
        if i + 1 < count {
            let len = p.len();
            for (at, ins) in p.iter_mut().enumerate() {
                if ins.code == RET_K && ins.k == libc::SECCOMP_RET_ALLOW {
                    // From the instruction after this one to the program's end.
                    *ins = sock_filter {
                        code: JA,
                        jt: 0,
                        jf: 0,
                        k: (len - at - 1) as u32,
                    };
                }
            }
        }
        out.extend(p);
    }
    out
}

/// The classic BPF the guard is written in (<linux/bpf_common.h>, <linux/audit.h>).
pub mod bpf {
    pub const LD_W_ABS: u16 = 0x20;
    pub const JEQ_K: u16 = 0x15;
    pub const JGE_K: u16 = 0x35;
    pub const RET_K: u16 = 0x06;
    pub const JA: u16 = 0x05;
    pub const JGT_K: u16 = 0x25;
    pub const JSET_K: u16 = 0x45;
    pub const AND_K: u16 = 0x54;
    pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // Offsets in struct seccomp_data.
    pub const NR: u32 = 0;
    pub const ARCH: u32 = 4;
}

pub fn guard_program() -> BpfProgram {
    use bpf::*;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let n = UNNAMED_EPERM.len() as u8;
    let mut p = vec![
        ins(LD_W_ABS, 0, 0, ARCH),
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, NR),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    // Each match jumps over the remaining comparisons, the range check and the ALLOW to
    // the EPERM.
    for (i, (_, nr)) in UNNAMED_EPERM.iter().enumerate() {
        p.push(ins(JEQ_K, n - i as u8 + 1, 0, *nr));
    }
    p.push(ins(JGE_K, 2, 0, FIRST_UNREVIEWED));
    p.push(ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    p.push(ins(
        RET_K,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
    ));
    p.push(ins(
        RET_K,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    ));
    p
}

/// A set of syscall numbers below [`FIRST_UNREVIEWED`], one bit each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Numbers([u64; 8]);

const _: () = assert!(FIRST_UNREVIEWED <= 64 * 8);

impl Numbers {
    pub const NONE: Self = Self([0; 8]);

    /// The numbers from `from` on (below [`FIRST_UNREVIEWED`]).
    pub fn from(from: u32) -> Self {
        let mut s = Self::NONE;
        for (i, w) in s.0.iter_mut().enumerate() {
            let first = i as u32 * 64;
            *w = match from.checked_sub(first) {
                None | Some(0) => u64::MAX,
                Some(n) if n < 64 => u64::MAX << n,
                Some(_) => 0,
            };
        }
        s.and(Self::below(FIRST_UNREVIEWED))
    }

    pub fn below(end: u32) -> Self {
        let mut s = Self::NONE;
        for nr in 0..end.min(64 * 8) {
            s.0[nr as usize / 64] |= 1 << (nr % 64);
        }
        s
    }

    pub fn one(nr: u32) -> Self {
        let mut s = Self::NONE;
        if nr < FIRST_UNREVIEWED {
            s.0[nr as usize / 64] = 1 << (nr % 64);
        }
        s
    }

    pub fn has(&self, nr: u32) -> bool {
        nr < 64 * 8 && self.0[nr as usize / 64] & (1 << (nr % 64)) != 0
    }

    pub fn and(mut self, other: Self) -> Self {
        self.0.iter_mut().zip(other.0).for_each(|(w, o)| *w &= o);
        self
    }

    pub fn minus(mut self, other: Self) -> Self {
        self.0.iter_mut().zip(other.0).for_each(|(w, o)| *w &= !o);
        self
    }

    pub fn add(&mut self, other: Self) {
        self.0.iter_mut().zip(other.0).for_each(|(w, o)| *w |= o);
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// The reviewed syscall numbers `program` allows on x86-64 whatever their arguments: one
/// pass over it (classic BPF jumps only forward), carrying to each instruction the numbers
/// that reach it with the number, or the architecture, in the accumulator. Numbers that
/// reach a read of anything else (an argument) are dropped, as the kernel's reckoning
/// drops them; so are numbers at an instruction this does not know. The same answer as
/// running the program for each number (`evaluate`, which the tests compare it with), in
/// some microseconds rather than the 0.4 ms that costs.
pub fn unconditionally_allowed(program: &[sock_filter]) -> Numbers {
    use bpf::*;
    // What reaches each instruction: with the number in the accumulator, with the arch.
    let mut with_nr = vec![Numbers::NONE; program.len() + 1];
    let mut with_arch = vec![Numbers::NONE; program.len() + 1];
    // Before any load the accumulator is 0: nothing is known of it here, so a program
    // that does not start by loading the number or the arch allows nothing unchecked.
    match program.first() {
        Some(ins) if ins.code == LD_W_ABS && ins.k == NR => {
            with_nr[1] = Numbers::below(FIRST_UNREVIEWED)
        }
        Some(ins) if ins.code == LD_W_ABS && ins.k == ARCH => {
            with_arch[1] = Numbers::below(FIRST_UNREVIEWED)
        }
        _ => return Numbers::NONE,
    }
    let mut allowed = Numbers::NONE;
    let end = program.len();
    for (pc, ins) in program.iter().enumerate().skip(1) {
        let next = pc + 1;
        let (t, f) = (next + usize::from(ins.jt), next + usize::from(ins.jf));
        let send = |to: usize, into: &mut Vec<Numbers>, s: Numbers| {
            if to <= end {
                into[to].add(s);
            }
        };
        for arch in [false, true] {
            let s = if arch { with_arch[pc] } else { with_nr[pc] };
            if s.is_empty() {
                continue;
            }
            let into = if arch { &mut with_arch } else { &mut with_nr };
            match ins.code {
                LD_W_ABS if ins.k == NR => send(next, &mut with_nr, s),
                LD_W_ABS if ins.k == ARCH => send(next, &mut with_arch, s),
                JEQ_K | JGE_K | JGT_K | JSET_K if arch => {
                    let a = AUDIT_ARCH_X86_64;
                    let taken = match ins.code {
                        JEQ_K => a == ins.k,
                        JGE_K => a >= ins.k,
                        JGT_K => a > ins.k,
                        _ => a & ins.k != 0,
                    };
                    send(if taken { t } else { f }, into, s);
                }
                JEQ_K | JGE_K | JGT_K | JSET_K => {
                    let taken = match ins.code {
                        JEQ_K => s.and(Numbers::one(ins.k)),
                        JGE_K => s.and(Numbers::from(ins.k)),
                        JGT_K => s.and(Numbers::from(ins.k.saturating_add(1))),
                        _ => {
                            let mut m = Numbers::NONE;
                            for nr in (0..FIRST_UNREVIEWED).filter(|nr| nr & ins.k != 0) {
                                m.add(Numbers::one(nr));
                            }
                            s.and(m)
                        }
                    };
                    send(t, into, taken);
                    send(f, into, s.minus(taken));
                }
                JA => send(next + ins.k as usize, into, s),
                RET_K if ins.k == libc::SECCOMP_RET_ALLOW => allowed.add(s),
                // The accumulator masked holds neither the number nor the arch any more.
                AND_K => {}
                // Another answer, an argument read, or an instruction not known here.
                _ => {}
            }
        }
    }
    allowed
}

/// A search over the syscall number for the programs `rest` (reviewed x86-64 numbers,
/// below [`FIRST_UNREVIEWED`], the guard having answered the others): `RET ALLOW` for a
/// number `rest` allows whatever its arguments, a jump past its own end (to `rest`) for
/// every other. A balanced tree of `JGE` over the ranges of numbers that share an answer,
/// each right branch through a `JA` so that no jump is limited to 255 instructions.
pub fn fast_path(rest: &[sock_filter]) -> BpfProgram {
    use bpf::*;
    let free = unconditionally_allowed(rest);
    let allowed = |nr: u32| nr < FIRST_UNREVIEWED && free.has(nr);
    // The ranges [start, next start) where the answer is the same, and that answer.
    let mut ranges: Vec<(u32, bool)> = Vec::new();
    for nr in 0..=FIRST_UNREVIEWED {
        let a = allowed(nr);
        if ranges.last().is_none_or(|&(_, b)| b != a) {
            ranges.push((nr, a));
        }
    }
    /// Leaves are written as `RET ALLOW` or as a placeholder `JA` to `rest`, whose offset
    /// is set once the program's length is known.
    const TO_REST: u32 = u32::MAX;
    fn tree(ranges: &[(u32, bool)], out: &mut Vec<sock_filter>) {
        let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
        if let [(_, allow)] = ranges {
            out.push(if *allow {
                ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW)
            } else {
                ins(JA, 0, 0, TO_REST)
            });
            return;
        }
        let (left, right) = ranges.split_at(ranges.len() / 2);
        let mut low = Vec::new();
        tree(left, &mut low);
        // nr >= the right half's first number: over the `JA`, which skips the left half.
        out.push(ins(JGE_K, 0, 1, right[0].0));
        out.push(ins(JA, 0, 0, low.len() as u32));
        out.extend(low);
        tree(right, out);
    }
    let mut p = vec![sock_filter {
        code: LD_W_ABS,
        jt: 0,
        jf: 0,
        k: NR,
    }];
    tree(&ranges, &mut p);
    let len = p.len();
    for (at, ins) in p.iter_mut().enumerate() {
        if ins.code == JA && ins.k == TO_REST {
            ins.k = (len - at - 1) as u32;
        }
    }
    p
}
