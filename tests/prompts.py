"""Prompts used by the tests: input-grounded (drafts get accepted) and open-ended (drafts get rejected)."""

ARTICLE = (
    "The city council met on Tuesday to discuss the new public library. The library will open in March "
    "and will have three floors, a children's section, and a cafe. The council approved a budget of two "
    "million dollars for the project. Construction will begin next month and will be finished by February."
)

GROUNDED = [
    [{"role": "user", "content": f"Summarize this article in two sentences:\n\n{ARTICLE}"}],
    [{"role": "user", "content": "Repeat this code exactly:\n\ndef area(width, height):\n"
                                 "    return width * height\n\nprint(area(3, 4))"}],
]
OPEN_ENDED = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    "Once upon a time, in a small village,",
]
