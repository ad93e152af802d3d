"""Writes a SentencePiece tokenizer.model with the ids of the byte-level tokenizer.json that
`grm model init` / `grm bench engine` write, so that llama.cpp's own converter
(convert_hf_to_gguf.py, which reads Gemma-2 vocabularies through SentencePiece) can convert
the random models: ids 0..5 the special tokens (<pad>, <eos>, <bos>, <unk>, <start_of_turn>,
<end_of_turn>), ids 6..261 one BYTE piece per byte (<0x00>..<0xFF>, i.e. 6 + byte, as in
tokenizer.json). The converter pads the vocabulary up to config.json's vocab_size.

    python spm_tokenizer.py MODEL_DIR     # writes MODEL_DIR/tokenizer.model, then checks it
"""

import json
import sys
from pathlib import Path

from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as pb

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def main(model_dir: Path) -> None:
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for i, s in enumerate(SPECIALS):
        if vocab.get(s) != i:
            sys.exit(f"{model_dir}/tokenizer.json: {s} is not id {i}; not the byte-level tokenizer")
    if len(vocab) != len(SPECIALS) + 256:
        sys.exit(f"{model_dir}/tokenizer.json: {len(vocab)} tokens, want {len(SPECIALS) + 256}")

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(SPECIALS) + 256
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.pad_id, m.trainer_spec.eos_id, m.trainer_spec.bos_id, m.trainer_spec.unk_id = 0, 1, 2, 3
    m.trainer_spec.pad_piece, m.trainer_spec.eos_piece = "<pad>", "<eos>"
    m.trainer_spec.bos_piece, m.trainer_spec.unk_piece = "<bos>", "<unk>"
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = False
    for s in SPECIALS:
        p = m.pieces.add()
        p.piece, p.score = s, 0.0
        p.type = pb.ModelProto.SentencePiece.UNKNOWN if s == "<unk>" else pb.ModelProto.SentencePiece.CONTROL
    for b in range(256):
        p = m.pieces.add()
        p.piece, p.score, p.type = f"<0x{b:02X}>", 0.0, pb.ModelProto.SentencePiece.BYTE
    out = model_dir / "tokenizer.model"
    out.write_bytes(m.SerializeToString())

    # The ids match: every byte goes to 6 + byte, as through tokenizer.json.
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(out))
    text = "Score: 2+2=4? é"
    want = [6 + b for b in text.encode("utf-8")]
    got = sp.EncodeAsIds(text)
    if got != want:
        sys.exit(f"{out}: {text!r} encodes to {got}, want {want}")
    for i, s in enumerate(SPECIALS):
        assert sp.IdToPiece(i) == s, (i, sp.IdToPiece(i))
    print(f"wrote {out} ({sp.GetPieceSize()} pieces; ids match tokenizer.json)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
