#include "textflag.h"
#include "go_asm.h"

// x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
#define SYS_write 1
#define SYS_writev 20
#define SYS_nanosleep 35
#define SYS_rt_sigreturn 15
#define SYS_exit_group 231
#define SYS_setitimer 38

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

// ucontext_t's saved RAX on x86-64: uc_mcontext (offset 40) gregs[REG_RAX
// = 13] (sys/ucontext.h): the refused call's return value.
#define uc_rax (40+13*8)
// -EPERM, what the refused call returns if the handler returns.
#define EPERM_RET $-1
// setitimer(2)'s ITIMER_REAL.
#define ITIMER_REAL 0

// sigsysHandler is the SIGSYS handler, entered by the kernel with the C
// calling convention: DI = signal, SI = siginfo, DX = ucontext. It runs on
// the thread's signal stack with all signals blocked and uses no stack
// (see trap_amd64.go).
TEXT ·sigsysHandler(SB),NOSPLIT|NOFRAME,$0
	MOVQ	DX, R12 // the ucontext, kept across the system calls below

	// The first faulting thread claims the report.
	MOVL	$0, AX
	MOVL	$1, CX
	LOCK
	CMPXCHGL	CX, ·trap+trapState_taken(SB)
	JNE	wait

	MOVL	si_errno(SI), AX
	MOVL	AX, ·trap+trapState_data(SB)
	MOVQ	si_call_addr(SI), AX
	MOVQ	AX, ·trap+trapState_addr(SB)
	MOVL	si_syscall(SI), AX
	MOVL	AX, ·trap+trapState_nr(SB)
	MOVL	si_arch(SI), AX
	MOVL	AX, ·trap+trapState_arch(SB)

	// The deadline: SIGALRM (sigalrmHandler) after reporterGrace.
	MOVQ	$ITIMER_REAL, DI
	LEAQ	·trap+trapState_deadline(SB), SI
	MOVQ	$0, DX
	MOVQ	$SYS_setitimer, AX
	SYSCALL

	// Wake the reporter.
	MOVQ	·trap+trapState_wakeFD(SB), DI
	CMPQ	DI, $0
	JLT	wait
	LEAQ	·trap+trapState_one(SB), SI
	MOVQ	$8, DX
	MOVQ	$SYS_write, AX
	SYSCALL

wait:
	// Give the reporter time to end the process, then let the thread go
	// on with the call failed (EPERM): a thread that held on would keep
	// what the runtime may need to run the reporter.
	LEAQ	·trap+trapState_hold(SB), DI
	MOVQ	$0, SI
	MOVQ	$SYS_nanosleep, AX
	SYSCALL
	MOVQ	EPERM_RET, uc_rax(R12)
	RET

// sigalrmHandler is the deadline's SIGALRM handler: the reporter has not
// ended the process, so this writes the line itself (unless the reporter
// did) and exits.
TEXT ·sigalrmHandler(SB),NOSPLIT|NOFRAME,$0
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

// sigsysRestorer returns from a signal handler (SA_RESTORER, which x86-64
// requires).
TEXT ·sigsysRestorer(SB),NOSPLIT|NOFRAME,$0
	MOVQ	$SYS_rt_sigreturn, AX
	SYSCALL
	INT	$3

// func sigsysHandlerPC() uintptr
TEXT ·sigsysHandlerPC(SB),NOSPLIT,$0-8
	MOVQ	$·sigsysHandler(SB), AX
	MOVQ	AX, ret+0(FP)
	RET

// func sigalrmHandlerPC() uintptr
TEXT ·sigalrmHandlerPC(SB),NOSPLIT,$0-8
	MOVQ	$·sigalrmHandler(SB), AX
	MOVQ	AX, ret+0(FP)
	RET

// func sigsysRestorerPC() uintptr
TEXT ·sigsysRestorerPC(SB),NOSPLIT,$0-8
	MOVQ	$·sigsysRestorer(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
