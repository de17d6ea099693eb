//! Compiles a decided seccomp policy (one answer per syscall number) to a classic BPF
//! program, and, for tests, runs such a program the way the kernel does.
//!
//! The program checks, in this order: the audit architecture (anything but the native one is
//! `foreign`: i386 through `int 0x80` on x86_64), numbers with bit 30 or above set (x32's
//! `__X32_SYSCALL_BIT`, never native: also `foreign`), numbers above the highest the policy
//! knows (`newer`: a syscall added after the table, so libc sees ENOSYS and falls back), then
//! each listed syscall, then `otherwise`. Lookups are a chain of `jeq` + `ret`, as
//! seccompiler's are; the kernel caches the syscalls the program allows for any argument
//! (seccomp action cache), so the chain is walked only by the few with argument checks and
//! by refused calls.

use seccompiler::sock_filter;

/// What the filter answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(u16),
}

/// The answer for one syscall. Arguments are compared on their low 32 bits: every argument
/// checked here is read by the kernel as a 32-bit value (`personality`'s persona and
/// `socket`'s domain are ints; legacy `clone` uses only the low half of its flags), so the
/// high half cannot change what the call does, and a 64-bit compare would let a value with
/// high bits set pass a `> 40` test that the kernel then reads as 40.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Always(Action),
    /// Allowed when argument `arg` is one of `values`, else errno `deny`.
    ArgIn {
        arg: u8,
        values: Vec<u32>,
        deny: u16,
    },
    /// Errno `deny` when argument `arg` is one of `values`, else allowed.
    ArgNotIn {
        arg: u8,
        values: Vec<u32>,
        deny: u16,
    },
    /// Errno `deny` when argument `arg` has any bit of `mask`, else allowed.
    ArgNoBits {
        arg: u8,
        mask: u32,
        deny: u16,
    },
}

/// A decided policy for one architecture.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `AUDIT_ARCH_*` of the native ABI.
    pub arch: u32,
    /// By syscall number, ascending.
    pub syscalls: Vec<(u32, Rule)>,
    /// The highest syscall number the policy knows.
    pub highest: u32,
    /// Errno for another architecture's ABI and for x32 numbers.
    pub foreign: u16,
    /// Errno for numbers above `highest`.
    pub newer: u16,
    /// Errno for every other number.
    pub otherwise: u16,
}

/// x32's syscall bit; every number from it up is refused as foreign.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel's limit on a program's length (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;

/// BPF_LD | BPF_W | BPF_ABS.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_RET_K: u16 = 0x06;

/// `struct seccomp_data` offsets: nr, arch, then args[6] of 8 bytes each from 16.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

fn arg_low(arg: u8) -> u32 {
    // Little-endian: the low half of an argument comes first.
    16 + 8 * u32::from(arg)
}

fn ld(off: u32) -> sock_filter {
    sock_filter {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k: off,
    }
}

fn jmp(op: u16, k: u32, jt: usize, jf: usize) -> sock_filter {
    sock_filter {
        code: BPF_JMP | op,
        jt: u8::try_from(jt).expect("short jump"),
        jf: u8::try_from(jf).expect("short jump"),
        k,
    }
}

fn ret(a: Action) -> sock_filter {
    let k = match a {
        Action::Allow => libc::SECCOMP_RET_ALLOW,
        Action::Errno(e) => libc::SECCOMP_RET_ERRNO | u32::from(e),
    };
    sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The instructions run once the number matched; each path ends in a `ret`.
fn block(rule: &Rule) -> Vec<sock_filter> {
    match rule {
        Rule::Always(a) => vec![ret(*a)],
        Rule::ArgIn { arg, values, deny } => {
            let mut b = vec![ld(arg_low(*arg))];
            for (i, v) in values.iter().enumerate() {
                // Past the other compares and the refusal, to the allow.
                b.push(jmp(BPF_JEQ, *v, values.len() - i, 0));
            }
            b.push(ret(Action::Errno(*deny)));
            b.push(ret(Action::Allow));
            b
        }
        Rule::ArgNotIn { arg, values, deny } => {
            let mut b = vec![ld(arg_low(*arg))];
            for (i, v) in values.iter().enumerate() {
                b.push(jmp(BPF_JEQ, *v, values.len() - i, 0));
            }
            b.push(ret(Action::Allow));
            b.push(ret(Action::Errno(*deny)));
            b
        }
        Rule::ArgNoBits { arg, mask, deny } => vec![
            ld(arg_low(*arg)),
            jmp(BPF_JSET, *mask, 0, 1),
            ret(Action::Errno(*deny)),
            ret(Action::Allow),
        ],
    }
}

/// The program for `policy`.
pub fn compile(policy: &Policy) -> Vec<sock_filter> {
    let mut p = vec![
        ld(OFF_ARCH),
        jmp(BPF_JEQ, policy.arch, 1, 0),
        ret(Action::Errno(policy.foreign)),
        ld(OFF_NR),
        jmp(BPF_JGE, X32_SYSCALL_BIT, 0, 1),
        ret(Action::Errno(policy.foreign)),
        jmp(BPF_JGT, policy.highest, 0, 1),
        ret(Action::Errno(policy.newer)),
    ];
    for (nr, rule) in &policy.syscalls {
        let b = block(rule);
        p.push(jmp(BPF_JEQ, *nr, 0, b.len()));
        p.extend(b);
    }
    p.push(ret(Action::Errno(policy.otherwise)));
    p
}

/// Runs `prog` on one syscall as the kernel would and returns its `SECCOMP_RET_*` value.
/// Only the instructions [`compile`] emits are understood.
#[cfg(test)]
pub fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let load = |off: u32| -> u32 {
        match off {
            OFF_NR => nr,
            OFF_ARCH => arch,
            o if (16..64).contains(&o) && o % 4 == 0 => {
                let a = args[(o as usize - 16) / 8];
                if (o - 16) % 8 == 0 {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            o => panic!("load at {o}"),
        }
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = &prog[pc];
        pc += 1;
        match i.code {
            BPF_LD_W_ABS => acc = load(i.k),
            BPF_RET_K => return i.k,
            c if c & 0x07 == BPF_JMP => {
                let taken = match c & 0xf0 {
                    BPF_JEQ => acc == i.k,
                    BPF_JGT => acc > i.k,
                    BPF_JGE => acc >= i.k,
                    BPF_JSET => acc & i.k != 0,
                    op => panic!("jump op {op:#x}"),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            c => panic!("instruction {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCH: u32 = 0xC000_003E;

    fn policy(syscalls: Vec<(u32, Rule)>) -> Policy {
        Policy {
            arch: ARCH,
            syscalls,
            highest: 100,
            foreign: 1,
            newer: 38,
            otherwise: 13,
        }
    }

    const ERRNO: u32 = libc::SECCOMP_RET_ERRNO;

    #[test]
    fn checks_run_in_order_and_rules_answer() {
        let p = compile(&policy(vec![
            (1, Rule::Always(Action::Allow)),
            (2, Rule::Always(Action::Errno(22))),
            (
                3,
                Rule::ArgIn {
                    arg: 1,
                    values: vec![5, 7],
                    deny: 9,
                },
            ),
            (
                4,
                Rule::ArgNotIn {
                    arg: 0,
                    values: vec![38, 40],
                    deny: 9,
                },
            ),
            (
                5,
                Rule::ArgNoBits {
                    arg: 0,
                    mask: 0x7E02_0000,
                    deny: 9,
                },
            ),
        ]));
        let allow = libc::SECCOMP_RET_ALLOW;
        let r = |nr, args| run(&p, ARCH, nr, args);
        assert_eq!(run(&p, 0x4000_0003, 1, [0; 6]), ERRNO | 1, "foreign arch");
        assert_eq!(r(1 | X32_SYSCALL_BIT, [0; 6]), ERRNO | 1, "x32 bit");
        assert_eq!(r(u32::MAX, [0; 6]), ERRNO | 1, "nr -1");
        assert_eq!(r(101, [0; 6]), ERRNO | 38, "newer");
        assert_eq!(r(100, [0; 6]), ERRNO | 13, "known, not listed");
        assert_eq!(r(1, [0; 6]), allow);
        assert_eq!(r(2, [0; 6]), ERRNO | 22);
        assert_eq!(r(3, [0, 7, 0, 0, 0, 0]), allow);
        assert_eq!(r(3, [0, 5, 0, 0, 0, 0]), allow);
        assert_eq!(r(3, [0, 6, 0, 0, 0, 0]), ERRNO | 9);
        // The high half of an argument is not the kernel's business for these calls.
        assert_eq!(r(3, [0, 1 << 32 | 7, 0, 0, 0, 0]), allow);
        assert_eq!(r(4, [2, 0, 0, 0, 0, 0]), allow);
        assert_eq!(r(4, [40, 0, 0, 0, 0, 0]), ERRNO | 9);
        assert_eq!(r(4, [1 << 32 | 40, 0, 0, 0, 0, 0]), ERRNO | 9);
        assert_eq!(r(5, [0x11, 0, 0, 0, 0, 0]), allow);
        assert_eq!(r(5, [0x1000_0011, 0, 0, 0, 0, 0]), ERRNO | 9);
    }

    #[test]
    fn long_tables_keep_every_jump_short() {
        let many = (0..400)
            .map(|nr| {
                (
                    nr,
                    Rule::ArgIn {
                        arg: 0,
                        values: vec![1, 2, 3],
                        deny: 1,
                    },
                )
            })
            .collect();
        let mut pol = policy(many);
        pol.highest = 500;
        let p = compile(&pol);
        assert!(p.len() < MAX_INSNS);
        assert_eq!(
            run(&p, ARCH, 399, [2, 0, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(run(&p, ARCH, 450, [2, 0, 0, 0, 0, 0]), ERRNO | 13);
    }
}
