# A 32-bit program that exits 0 (a minimal stand-in for the project's own).
	.globl _start
_start:
	movl $1, %eax
	xorl %ebx, %ebx
	int $0x80
