#include "textflag.h"
#include "go_asm.h"

// x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
#define SYS_write 1
#define SYS_writev 20
#define SYS_nanosleep 35
#define SYS_rt_sigreturn 15
#define SYS_exit_group 231

// struct siginfo for SIGSYS on x86-64 (include/uapi/asm-generic/siginfo.h).
#define si_errno 4
#define si_call_addr 16
#define si_syscall 24
#define si_arch 28

// AUDIT_ARCH_X86_64 (include/uapi/linux/audit.h).
#define AUDIT_ARCH_X86_64 0xc000003e

// Exit status after a violation: ExitCode.
#define EXIT_SECCOMP 148

// sizeof(string), sizeof(struct iovec).
#define STRING_SIZE 16
#define IOV_SIZE 16

// sigsysHandler is the SIGSYS handler, entered by the kernel with the C
// calling convention: DI = signal, SI = siginfo, DX = ucontext. It runs on
// the thread's signal stack with all signals blocked, uses no stack and
// never returns (see trap_amd64.go).
TEXT ·sigsysHandler(SB),NOSPLIT|NOFRAME,$0
	// The first faulting thread claims the report.
	MOVL	$0, AX
	MOVL	$1, CX
	LOCK
	CMPXCHGL	CX, ·trap+trapState_taken(SB)
	JNE	sleep

	MOVL	si_errno(SI), AX
	MOVL	AX, ·trap+trapState_data(SB)
	MOVQ	si_call_addr(SI), AX
	MOVQ	AX, ·trap+trapState_addr(SB)
	MOVL	si_syscall(SI), AX
	MOVL	AX, ·trap+trapState_nr(SB)
	MOVL	si_arch(SI), AX
	MOVL	AX, ·trap+trapState_arch(SB)

	// Wake the reporter, then give it reporterGrace to end the process.
	MOVQ	·trap+trapState_wakeFD(SB), DI
	CMPQ	DI, $0
	JLT	fallback
	LEAQ	·trap+trapState_one(SB), SI
	MOVQ	$8, DX
	MOVQ	$SYS_write, AX
	SYSCALL
	LEAQ	·trap+trapState_grace(SB), DI
	MOVQ	$0, SI
	MOVQ	$SYS_nanosleep, AX
	SYSCALL

fallback:
	// The reporter did not end the process: write the line unless it
	// did, then exit.
	MOVL	·trap+trapState_reported(SB), AX
	CMPL	AX, $0
	JNE	exit

	// iov[1]: the syscall number in decimal, written backwards into
	// digits.
	MOVL	·trap+trapState_nr(SB), AX
	LEAQ	·trap+trapState_digits+20(SB), DI
	MOVQ	$10, CX
	MOVQ	$0, R8
digit:
	MOVQ	$0, DX
	DIVQ	CX
	ADDQ	$48, DX // '0'
	DECQ	DI
	MOVB	DL, (DI)
	INCQ	R8
	CMPQ	AX, $0
	JNE	digit
	MOVQ	DI, ·trap+trapState_iov+(1*IOV_SIZE)(SB)
	MOVQ	R8, ·trap+trapState_iov+(1*IOV_SIZE+8)(SB)

	// iov[3]: the syscall's name, or "unknown".
	MOVQ	·trap+trapState_unknown(SB), BX
	MOVQ	·trap+trapState_unknown+8(SB), CX
	MOVL	·trap+trapState_arch(SB), AX
	CMPL	AX, $AUDIT_ARCH_X86_64
	JNE	name
	MOVL	·trap+trapState_nr(SB), AX
	CMPQ	AX, ·trap+trapState_nnames(SB)
	JAE	name
	SHLQ	$4, AX
	ADDQ	·trap+trapState_names(SB), AX
	MOVQ	8(AX), DX
	CMPQ	DX, $0
	JEQ	name
	MOVQ	(AX), BX
	MOVQ	DX, CX
name:
	MOVQ	BX, ·trap+trapState_iov+(3*IOV_SIZE)(SB)
	MOVQ	CX, ·trap+trapState_iov+(3*IOV_SIZE+8)(SB)

	// iov[4]: the tail naming the thread class and filter, by datum.
	MOVL	·trap+trapState_data(SB), AX
	CMPQ	AX, $const_numTrapData
	JB	tail
	MOVQ	$0, AX
tail:
	SHLQ	$4, AX
	LEAQ	·trap+trapState_tails(SB), BX
	ADDQ	AX, BX
	MOVQ	(BX), CX
	MOVQ	CX, ·trap+trapState_iov+(4*IOV_SIZE)(SB)
	MOVQ	8(BX), CX
	MOVQ	CX, ·trap+trapState_iov+(4*IOV_SIZE+8)(SB)

	MOVQ	·trap+trapState_logFD(SB), DI
	LEAQ	·trap+trapState_iov(SB), SI
	MOVQ	$5, DX
	MOVQ	$SYS_writev, AX
	SYSCALL

exit:
	MOVQ	$EXIT_SECCOMP, DI
	MOVQ	$SYS_exit_group, AX
	SYSCALL
	JMP	exit

sleep:
	// Another thread reports; this one waits for the end.
	LEAQ	·trap+trapState_forever(SB), DI
	MOVQ	$0, SI
	MOVQ	$SYS_nanosleep, AX
	SYSCALL
	JMP	sleep

// sigsysRestorer returns from a signal handler (SA_RESTORER, which x86-64
// requires; sigsysHandler never returns).
TEXT ·sigsysRestorer(SB),NOSPLIT|NOFRAME,$0
	MOVQ	$SYS_rt_sigreturn, AX
	SYSCALL
	INT	$3

// func sigsysHandlerPC() uintptr
TEXT ·sigsysHandlerPC(SB),NOSPLIT,$0-8
	MOVQ	$·sigsysHandler(SB), AX
	MOVQ	AX, ret+0(FP)
	RET

// func sigsysRestorerPC() uintptr
TEXT ·sigsysRestorerPC(SB),NOSPLIT,$0-8
	MOVQ	$·sigsysRestorer(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
