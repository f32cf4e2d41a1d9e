"""Make the demo sample that ships with the package (``builder/data/sample/``).

Five small drawn scenes (PIL, deterministic), each with a dense description that is true of the drawing,
and a hand-written MCQ list for them (``mcqs.jsonl``) that ``lpt demo`` falls back to when the small
stage-1 model writes no valid question. Run ``python -m builder.data.make_sample`` to rebuild; the output
is committed.

Files: ``images/*.png``, ``descriptions.jsonl`` (``id``, ``image``, ``description``, ``split``) and
``mcqs.jsonl`` (``image_id``, ``question``, ``options``, ``answer``, ``question_type``, and a hand-written
simple ``thought`` with its ``thought_answer``).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

W, H = 320, 240
OUT = Path(__file__).parent / "sample"


def house() -> Image.Image:
    im = Image.new("RGB", (W, H), (135, 206, 235))  # sky blue
    d = ImageDraw.Draw(im)
    d.rectangle([0, 160, W, H], fill=(60, 170, 60))  # grass
    d.ellipse([18, 14, 62, 58], fill=(255, 215, 0))  # sun, top left
    d.ellipse([200, 20, 250, 42], fill=(255, 255, 255))  # one cloud
    d.rectangle([50, 110, 62, 165], fill=(120, 72, 30))  # tree trunk
    d.ellipse([26, 66, 86, 120], fill=(20, 120, 40))  # tree crown
    d.rectangle([150, 100, 250, 170], fill=(200, 40, 40))  # red house body
    d.polygon([(140, 100), (200, 55), (260, 100)], fill=(90, 50, 20))  # brown roof
    d.rectangle([188, 130, 212, 170], fill=(30, 60, 200))  # blue door
    d.rectangle([160, 112, 180, 130], fill=(255, 255, 200))  # left window
    d.rectangle([220, 112, 240, 130], fill=(255, 255, 200))  # right window
    return im


def circles() -> Image.Image:
    im = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(im)
    colours = [(220, 30, 30), (255, 140, 0), (240, 220, 0), (30, 160, 60), (30, 70, 220)]
    for k, c in enumerate(colours):
        cx = 40 + k * 60
        r = 34 if k == 3 else 20  # the green one is larger
        d.ellipse([cx - r, 110 - r, cx + r, 110 + r], fill=c)
    d.rectangle([20, 170, 300, 176], fill=(0, 0, 0))  # black line under the row
    return im


def desk() -> Image.Image:
    im = Image.new("RGB", (W, H), (150, 150, 150))  # grey surface
    d = ImageDraw.Draw(im)
    d.rectangle([110, 70, 190, 150], fill=(128, 0, 160))  # purple square, centre
    d.polygon([(220, 80), (250, 80), (235, 55)], fill=(255, 140, 0))  # orange triangle 1
    d.polygon([(230, 140), (260, 140), (245, 115)], fill=(255, 140, 0))  # orange triangle 2
    d.ellipse([20, 180, 60, 220], fill=(255, 105, 180))  # pink circle, lower left
    d.rectangle([250, 190, 300, 200], fill=(255, 255, 255))  # thin white bar, lower right
    return im


def night() -> Image.Image:
    im = Image.new("RGB", (W, H), (15, 20, 60))  # dark navy sky
    d = ImageDraw.Draw(im)
    d.ellipse([230, 20, 290, 80], fill=(250, 240, 170))  # moon
    d.ellipse([245, 12, 305, 72], fill=(15, 20, 60))  # bite: a crescent opening to the upper right
    for x, y in [(30, 30), (80, 55), (130, 25), (175, 70), (60, 100), (150, 110), (205, 40)]:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 255))  # seven stars
    d.pieslice([-60, 160, 380, 380], 180, 360, fill=(10, 10, 10))  # black hill
    d.rectangle([150, 185, 166, 201], fill=(255, 200, 60))  # one lit window on the hill
    return im


def crossing() -> Image.Image:
    im = Image.new("RGB", (W, H), (210, 230, 245))  # pale sky
    d = ImageDraw.Draw(im)
    d.rectangle([0, 170, W, H], fill=(70, 70, 70))  # dark grey road
    for k in range(4):  # four white stripes
        x = 80 + k * 45
        d.rectangle([x, 180, x + 25, 232], fill=(255, 255, 255))
    d.rectangle([252, 60, 260, 170], fill=(120, 120, 120))  # grey pole
    d.rectangle([236, 10, 276, 100], fill=(0, 0, 0))  # black box
    d.ellipse([244, 16, 268, 40], fill=(255, 0, 0))  # red lamp, lit, top
    d.ellipse([244, 43, 268, 67], fill=(90, 80, 0))  # yellow lamp, dim
    d.ellipse([244, 70, 268, 94], fill=(0, 70, 20))  # green lamp, dim
    return im


SCENES = {
    "sample_house": (house, (
        "A simple drawn landscape. The upper part is a flat light-blue sky and the lower quarter is bright green "
        "grass. A round yellow sun sits in the top-left corner, and a single small white oval cloud floats near "
        "the top right. On the left stands a tree with a thin brown trunk and a round dark-green crown. Right of "
        "centre is a red house with a dark-brown triangular roof. The house has a blue door in the middle of its "
        "front wall and two small pale-yellow square windows, one on each side of the door. There are no people "
        "or animals.")),
    "sample_night": (night, (
        "A night scene with a dark navy-blue sky. In the upper-right area hangs a pale-yellow crescent moon. "
        "Seven small white stars are scattered across the left and middle of the sky. The bottom of the picture "
        "is filled by a wide black hill with a rounded top that spans the whole width. On the hill, near the "
        "centre, there is one small glowing yellow-orange square, like a lit window. There are no clouds, "
        "trees or people, and the colours are flat.")),
    "sample_circles": (circles, (
        "Five filled circles stand in a straight horizontal row across a plain white background. From left to "
        "right their colours are red, orange, yellow, green and blue. Four of the circles are the same small "
        "size, but the fourth one, the green circle, is clearly larger than the others. The circles are evenly "
        "spaced and none of them touch. Below the row, a thin black horizontal line runs almost the full width "
        "of the picture. There is no text, shading or texture; every shape is a flat colour.")),
    "sample_desk": (desk, (
        "A flat grey surface seen from above holds a few coloured shapes. In the centre is a large purple "
        "square. To the right of the square are two small orange triangles, one above the other, both pointing "
        "upward. In the lower-left corner there is a single pink circle, and in the lower-right corner a thin "
        "white horizontal bar. The shapes do not overlap, and the square is by far the largest object. The "
        "triangles are the same size. Nothing else is on the surface.")),
    "sample_crossing": (crossing, (
        "A simple street scene under a pale-blue sky. The bottom of the picture is a dark-grey road with a "
        "pedestrian crossing made of four white vertical stripes side by side. On the right side stands a "
        "grey pole holding a black traffic-light box with three round lamps stacked vertically. The top lamp is "
        "lit bright red; the middle lamp is a dim dark yellow and the bottom lamp a dim dark green, so neither "
        "of them is lit. There are no cars, people or buildings.")),
}

# (image_id, question, options, answer, question_type, hand-written simple thought, the thought's answer).
# ``lpt demo`` uses the thoughts as stand-in stage-2 output when the random-weight VLM writes nothing
# parseable. One thought is deliberately wrong (it miscounts the stars), so stage 3 has an X case to fix.
MCQS = [
    ("sample_house", "What colour is the door of the house?", ["Blue", "Red", "Green", "Brown"], "Blue",
     "Recognition", ("The house stands right of centre. In the middle of its red front wall there is a door, and "
     "the door is painted blue, a deeper blue than the sky."), "Blue"),
    ("sample_house", "Where is the sun in the picture?",
     ["Top-left corner", "Top-right corner", "Behind the house", "Bottom-left corner"], "Top-left corner",
     "Spatial and Relational", ("Along the top edge of the picture there is a round yellow shape above the tree, "
     "in the upper-left corner. The only thing near the top right is a small white cloud."), "Top-left corner"),
    ("sample_circles", "How many circles are in the row?", ["Four", "Five", "Six", "Three"], "Five",
     "Counting and Quantification", ("Going from left to right along the row: a red circle, an orange one, a yellow "
     "one, a green one and a blue one. That makes five circles."), "Five"),
    ("sample_circles", "Which circle is larger than the others?",
     ["The green one", "The red one", "The blue one", "The yellow one"], "The green one", "Recognition",
     ("Most of the circles share the same small size. The fourth circle from the left, the green one, is clearly "
     "bigger than its neighbours."), "The green one"),
    ("sample_desk", "What is to the right of the purple square?",
     ["Two orange triangles", "A pink circle", "A white bar", "Nothing"], "Two orange triangles",
     "Spatial and Relational", ("The purple square sits in the centre. Just to its right there are two small orange "
     "triangles, one higher than the other. The pink circle is far away in the lower-left corner."),
     "Two orange triangles"),
    ("sample_desk", "What shape is in the lower-left corner?", ["A circle", "A triangle", "A square", "A star"],
     "A circle", "Recognition", ("In the lower-left corner there is a round pink shape with no corners, so it is a "
     "circle."), "A circle"),
    ("sample_night", "How many stars are in the sky?", ["Five", "Six", "Seven", "Nine"], "Seven",
     "Counting and Quantification", ("The sky is dark with small white dots scattered over the left and middle. "
     "Counting them quickly, I get six stars."), "Six"),
    ("sample_night", "What shape is the moon?", ["A crescent", "A full circle", "A half circle", "A square"],
     "A crescent", "Recognition", ("The moon in the upper right is a thin curved sliver of pale yellow, with the dark "
     "sky cutting into it, so it is a crescent."), "A crescent"),
    ("sample_crossing", "Which lamp of the traffic light is lit?",
     ["The red top lamp", "The yellow middle lamp", "The green bottom lamp", "None of them"], "The red top lamp",
     "Recognition", ("The traffic light has three round lamps stacked vertically. Only the top one glows bright red; "
     "the middle and bottom lamps look dark and dull."), "The red top lamp"),
    ("sample_crossing", "How many white stripes does the crossing have?", ["Three", "Four", "Five", "Six"], "Four",
     "Counting and Quantification", ("The crossing on the grey road is made of white vertical stripes side by side. "
     "Counting them from left to right gives four stripes."), "Four"),
]


def main(out: Path = OUT) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for image_id, (draw, description) in SCENES.items():
        draw().save(out / "images" / f"{image_id}.png", optimize=True)
        lines.append(json.dumps({"id": image_id, "image": f"images/{image_id}.png", "split": "train",
                                 "description": description}))
    (out / "descriptions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    mcqs = [json.dumps({"image_id": i, "question": q, "options": o, "answer": a, "question_type": t,
                        "thought": th, "thought_answer": ta})
            for i, q, o, a, t, th, ta in MCQS]
    (out / "mcqs.jsonl").write_text("\n".join(mcqs) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
