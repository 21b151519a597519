"""A three-step graph with a streaming step: `servegraph serve examples.hello:graph`."""

import asyncio

import servegraph as sg


def clean(body: dict) -> dict:
    return {**body, "question": body.get("question", "").strip()}


class Answer:
    def __init__(self, greeting: str = "Hello"):
        self.greeting = greeting

    def do(self, body: dict) -> dict:
        return {**body, "answer": f"{self.greeting}! You asked: {body['question']}"}


async def words(body: dict):
    for word in body["answer"].split():
        await asyncio.sleep(0.05)
        yield word + " "


graph = sg.Graph("hello")
graph.to(name="clean", handler=clean).to(Answer, name="answer", greeting="Hi").respond()

stream_graph = sg.Graph("hello-stream")
stream_graph.to(name="clean", handler=clean).to(Answer, name="answer").to(name="words", handler=words).respond()
