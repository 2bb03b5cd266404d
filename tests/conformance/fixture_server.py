"""A conformance fixture server on the official Python SDK: the suite's core ``test_*`` tools, resources, prompts.

Written from the server requirements each conformance scenario states (tools, resources, prompts, logging,
progress, sampling, elicitation, completion, subscriptions, and the basic 2026-07-28 multi-round-trip tools), so
that, without the suite's reference server (no package registry ships it), the scenarios exercise the success
paths through the gateway: server-to-client requests and notifications on SSE, and MRTR rounds. It serves both
protocol revisions, as the SDK does. Usage: ``fixture_server.py PORT``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.types import (
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    ElicitRequest,
    ElicitRequestFormParams,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequiredResult,
    ListRootsRequest,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel

PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_EMPTY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="


class Answer(BaseModel):
    response: str


def build() -> MCPServer:
    mcp = MCPServer("conformance-fixture", version="1.0.0", log_level="WARNING")
    subscriptions: set[str] = set()

    @mcp.tool()
    def test_simple_text() -> str:
        """Simple text content."""
        return "This is a simple text response for testing."

    @mcp.tool()
    def test_image_content() -> list[ImageContent]:
        """Image content (a 1x1 PNG)."""
        return [ImageContent(type="image", data=PNG_1X1, mime_type="image/png")]

    @mcp.tool()
    def test_audio_content() -> list[AudioContent]:
        """Audio content (an empty WAV)."""
        return [AudioContent(type="audio", data=WAV_EMPTY, mime_type="audio/wav")]

    @mcp.tool()
    def test_embedded_resource() -> list[EmbeddedResource]:
        """An embedded text resource."""
        text = TextResourceContents(uri="test://embedded-resource", mime_type="text/plain", text="Embedded text.")
        return [EmbeddedResource(type="resource", resource=text)]

    @mcp.tool()
    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        """Text, image and an embedded resource in one result."""
        data = TextResourceContents(
            uri="test://mixed-content-resource", mime_type="application/json", text='{"test":"data","value":123}'
        )
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
            EmbeddedResource(type="resource", resource=data),
        ]

    @mcp.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Three info log notifications, 50 ms apart."""
        for i, text in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
            if i:
                await asyncio.sleep(0.05)
            await ctx.log("info", text)
        return "Tool with logging executed successfully"

    @mcp.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Progress 0, 50, 100 of 100, 50 ms apart."""
        for i, step in enumerate((0, 50, 100)):
            if i:
                await asyncio.sleep(0.05)
            await ctx.report_progress(progress=step, total=100, message=f"step {step} of 100")
        return "Tool with progress executed successfully"

    @mcp.tool()
    def test_error_handling() -> str:
        """Always fails: the result has isError true."""
        raise RuntimeError("This tool intentionally returns an error for testing")

    @mcp.tool()
    async def test_sampling(prompt: str, ctx: Context) -> str:
        """Asks the client's model (sampling/createMessage) and returns its answer."""
        message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
        result = await ctx.session.create_message(messages=[message], max_tokens=100, related_request_id=ctx.request_id)
        content = result.content
        text = content.text if isinstance(content, TextContent) else str(content)
        return f"LLM response: {text}"

    @mcp.tool()
    async def test_elicitation(message: str, ctx: Context) -> str:
        """Asks the user (elicitation/create) and reports what came back."""
        result = await ctx.elicit(message=message, schema=Answer)
        if result.action == "accept":
            return f"User response: action=accept, content={result.data.model_dump()}"
        return f"User response: action={result.action}"

    _mrtr_tools(mcp)

    @mcp.resource("test://static-text", mime_type="text/plain")
    def static_text() -> str:
        """A static text resource."""
        return "This is the content of the static text resource."

    @mcp.resource("test://static-binary", mime_type="image/png")
    def static_binary() -> bytes:
        """A static binary resource (PNG)."""
        import base64

        return base64.b64decode(PNG_1X1)

    @mcp.resource("test://template/{id}/data", mime_type="application/json")
    def template(id: str) -> str:
        """A resource template; the id comes back in the data."""
        return f'{{"id":"{id}","templateTest":true,"data":"Data for ID: {id}"}}'

    @mcp.resource("test://watched-resource", mime_type="text/plain")
    def watched() -> str:
        """A resource clients may subscribe to."""
        return "Watched resource content"

    @mcp.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A prompt without arguments."""
        return [UserMessage("This is a simple prompt for testing.")]

    @mcp.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt whose text carries its two arguments."""
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @mcp.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # the suite names it so
        """A prompt embedding the resource named by its argument."""
        text = TextResourceContents(uri=resourceUri, mime_type="text/plain", text="Embedded resource content.")
        return [
            UserMessage(EmbeddedResource(type="resource", resource=text)),
            UserMessage("Please process the embedded resource above."),
        ]

    @mcp.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt with an image."""
        return [
            UserMessage(ImageContent(type="image", data=PNG_1X1, mime_type="image/png")),
            UserMessage("Please analyze the image above."),
        ]

    @mcp.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        return Completion(values=[], total=0, has_more=False)

    async def set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
        subscriptions.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
        subscriptions.discard(str(params.uri))
        return EmptyResult()

    lowlevel = mcp._lowlevel_server  # the SDK has no public hook for these three yet
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    return mcp


def _mrtr_tools(mcp: MCPServer) -> None:
    """2026-07-28 multi-round-trip tools: round 1 asks for input, the retry carrying the answer completes."""

    @mcp.tool()
    async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
        """Asks the user's name, then greets them."""
        answer: Any = (ctx.input_responses or {}).get("user_name")
        if answer is not None:
            return f"Hello, {(getattr(answer, 'content', None) or {}).get('name', 'unknown')}!"
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        ask = ElicitRequest(params=ElicitRequestFormParams(message="What is your name?", requested_schema=schema))
        return InputRequiredResult(input_requests={"user_name": ask})

    @mcp.tool()
    async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
        """Asks the client's model a question, then returns its answer."""
        answer: Any = (ctx.input_responses or {}).get("capital_question")
        if answer is not None:
            content = getattr(answer, "content", None)
            return f"The model said: {getattr(content, 'text', content)}"
        question = SamplingMessage(role="user", content=TextContent(type="text", text="What is the capital of France?"))
        ask = CreateMessageRequest(params=CreateMessageRequestParams(messages=[question], max_tokens=100))
        return InputRequiredResult(input_requests={"capital_question": ask})

    @mcp.tool()
    async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
        """Asks for the client's roots, then counts them."""
        answer: Any = (ctx.input_responses or {}).get("client_roots")
        if answer is not None:
            return f"Client has {len(getattr(answer, 'roots', None) or [])} root(s)"
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


def main() -> None:
    app = build().streamable_http_app(streamable_http_path="/mcp", retry_interval=100)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")


if __name__ == "__main__":
    main()
