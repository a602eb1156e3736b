//go:build amd64 && !purego

#include "textflag.h"

// func indexBulk(b []byte) int
TEXT ·indexBulk(SB), NOSPLIT, $0-32
	MOVQ b_base+0(FP), SI
	MOVQ b_len+8(FP), BX
	MOVQ SI, DI
	ANDQ $~15, BX
	LEAQ (SI)(BX*1), CX // where the last whole block ends

	MOVQ $0x2020202020202020, AX
	MOVQ AX, X4
	PUNPCKLQDQ X4, X4
	MOVQ $0x2222222222222222, AX
	MOVQ AX, X5
	PUNPCKLQDQ X5, X5
	MOVQ $0x7b7b7b7b7b7b7b7b, AX
	MOVQ AX, X6
	PUNPCKLQDQ X6, X6
	MOVQ $0x7d7d7d7d7d7d7d7d, AX
	MOVQ AX, X7
	PUNPCKLQDQ X7, X7

	// 64 bytes a round while there are: the masks of four blocks OR-ed,
	// one branch; a round with a candidate is looked at 16 bytes at a time.
loop64:
	LEAQ 64(SI), DX
	CMPQ DX, CX
	JHI  loop
	MOVOU (SI), X0
	MOVOU 16(SI), X8
	MOVOU 32(SI), X9
	MOVOU 48(SI), X10
	POR   X4, X0
	POR   X4, X8
	POR   X4, X9
	POR   X4, X10
	MOVO  X0, X1
	MOVO  X0, X2
	PCMPEQB X5, X0
	PCMPEQB X6, X1
	PCMPEQB X7, X2
	POR   X1, X0
	POR   X2, X0
	MOVO  X8, X1
	MOVO  X8, X2
	PCMPEQB X5, X8
	PCMPEQB X6, X1
	PCMPEQB X7, X2
	POR   X1, X8
	POR   X2, X8
	MOVO  X9, X1
	MOVO  X9, X2
	PCMPEQB X5, X9
	PCMPEQB X6, X1
	PCMPEQB X7, X2
	POR   X1, X9
	POR   X2, X9
	MOVO  X10, X1
	MOVO  X10, X2
	PCMPEQB X5, X10
	PCMPEQB X6, X1
	PCMPEQB X7, X2
	POR   X1, X10
	POR   X2, X10
	POR   X8, X0
	POR   X9, X0
	POR   X10, X0
	PMOVMSKB X0, AX
	TESTL AX, AX
	JNZ   loop
	MOVQ  DX, SI
	JMP   loop64

loop:
	CMPQ SI, CX
	JEQ  none
	MOVOU (SI), X0
	POR   X4, X0 // '[' and ']' become '{' and '}'
	MOVO  X0, X1
	MOVO  X0, X2
	PCMPEQB X5, X0
	PCMPEQB X6, X1
	PCMPEQB X7, X2
	POR   X1, X0
	POR   X2, X0
	PMOVMSKB X0, AX
	TESTL AX, AX
	JNZ   found
	ADDQ  $16, SI
	JMP   loop

found:
	BSFL AX, AX
	SUBQ DI, SI
	ADDQ AX, SI
	MOVQ SI, ret+24(FP)
	RET

none:
	MOVQ BX, ret+24(FP)
	RET
