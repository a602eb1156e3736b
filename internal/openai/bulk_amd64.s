//go:build amd64 && !purego

#include "textflag.h"

// MATCH sets in R, a block OR-ed with 0x20, the bytes equal to '"', '{'
// or '}' (X5, X6, X7) to 0xff, the others to 0. It uses X1 and X2.
#define MATCH(R) \
	MOVO R, X1 \
	MOVO R, X2 \
	PCMPEQB X5, R \
	PCMPEQB X6, X1 \
	PCMPEQB X7, X2 \
	POR X1, R \
	POR X2, R

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
	MATCH(X0)
	MATCH(X8)
	MATCH(X9)
	MATCH(X10)
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
	MATCH(X0)
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
