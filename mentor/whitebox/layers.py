"""Which student hidden state is compared with which teacher hidden state.

Hidden states are numbered as transformers returns them: 0 is the embedding output and i the
output of layer i, so a model with L layers has states 0..L (for encoder-decoder models, the
decoder's). The default maps the student's layers uniformly onto the teacher's: student layer i
to teacher layer round(i * L_teacher / L_student), so the last layers always meet.
"""

from __future__ import annotations

import math

from mentor.errors import MentorError


def depth_and_width(config, is_seq2seq: bool) -> tuple[int, int]:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    if is_seq2seq:
        depth = getattr(c, "num_decoder_layers", None) or c.num_layers
    else:
        depth = c.num_hidden_layers
    width = getattr(c, "hidden_size", None) or c.d_model
    return int(depth), int(width)


def uniform_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    return [(i, max(1, math.floor(i * teacher_layers / student_layers + 0.5))) for i in range(1, student_layers + 1)]


def parse_layer_map(text: str | None, student_layers: int, teacher_layers: int,
                    default: str = "uniform") -> list[tuple[int, int]]:
    """'1:2,2:4' -> [(1, 2), (2, 4)]; None -> the uniform map (or only the last layers)."""
    if not text:
        if default == "last":
            return [(student_layers, teacher_layers)]
        return uniform_map(student_layers, teacher_layers)
    pairs = []
    for part in text.split(","):
        try:
            s, t = (int(x) for x in part.strip().split(":"))
        except ValueError:
            raise MentorError(f"layer_map '{text}': write student:teacher pairs like '1:2,2:4'") from None
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise MentorError(f"layer_map pair {s}:{t} is out of range: the student has hidden states 0..{student_layers}, "
                              f"the teacher 0..{teacher_layers} (0 is the embedding output)")
        pairs.append((s, t))
    return pairs
