"""The API server's additions: the error contract for a client's mistakes and ``GET /metrics``.

Errors: 4xx with a JSON ``detail``, never a 500.

- an image payload that does not decode (bad base64, bytes that are no image, an unreachable URL)
  is **400**, naming the problem;
- an image the configured mask provider cannot split is **422** when ``bgobj_mask_fallback: error``
  (with a fallback provider the request is answered with the fallback's mask, logged). Streaming
  requests are checked before the stream starts, so they get the same status codes.

LLaMA-Factory's route handlers call ``_process_request`` (``llamafactory.api.chat``) and the two
``create_*_response`` functions imported into ``llamafactory.api.app``; those are wrapped.

Metrics: ``create_app`` is wrapped to add ``GET /metrics`` (Prometheus text format, see
:mod:`lf_ext.inference.metrics`) and a middleware counting answered requests by route and status.
"""

from __future__ import annotations

import binascii
from types import ModuleType

from lf_ext.masks.base import MaskError
from lf_ext.patching import call_after, wrap

BAD_PAYLOAD = (binascii.Error, OSError)  # base64 errors; PIL's UnidentifiedImageError and decode errors are OSErrors


def _http_error(status: int, detail: str):
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=detail)


def _checking_payloads(original):
    def _process_request(request):
        import requests

        try:
            return original(request)
        except (*BAD_PAYLOAD, requests.RequestException) as err:
            raise _http_error(400, f"bad image payload: {type(err).__name__}: {err}") from None

    return _process_request


def _mask_error_is_422(original):
    async def create_chat_completion_response(request, chat_model):
        try:
            return await original(request, chat_model)
        except MaskError as err:
            raise _http_error(422, f"the image cannot be split into background and object: {err}") from None

    return create_chat_completion_response


def _checked_before_streaming(chat_module: ModuleType):
    def make(original):
        def create_stream_chat_completion_response(request, chat_model):
            _, _, _, images, _, _ = chat_module._process_request(request.model_copy(deep=True))  # 400 before the stream
            engine = getattr(chat_model, "engine", None)
            plugin = getattr(getattr(engine, "template", None), "mm_plugin", None)
            if images and hasattr(plugin, "bind"):  # a bgobj plugin: split the images now (422 before the stream)
                try:
                    plugin._get_mm_inputs(images, [], [], engine.processor)
                except MaskError as err:
                    raise _http_error(422, f"the image cannot be split into background and object: {err}") from None
            return original(request, chat_model)

        return create_stream_chat_completion_response

    return make


def _add_metrics(app, *args, **kwargs) -> None:
    from fastapi import Response
    from starlette.middleware.base import BaseHTTPMiddleware

    from lf_ext.inference.metrics import HTTP_REQUESTS, exposition

    async def count_requests(request, call_next):
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            HTTP_REQUESTS.labels(path=getattr(route, "path", "unmatched"), status=str(status)).inc()

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        body, content_type = exposition()
        return Response(content=body, media_type=content_type)

    app.add_middleware(BaseHTTPMiddleware, dispatch=count_requests)


def patch_api_chat(chat_module: ModuleType) -> None:
    wrap(chat_module, "_process_request", _checking_payloads)


def patch_api_app(app_module: ModuleType) -> None:
    import llamafactory.api.chat as chat_module

    call_after(app_module, "create_app", _add_metrics)
    wrap(app_module, "create_chat_completion_response", _mask_error_is_422)
    wrap(app_module, "create_stream_chat_completion_response", _checked_before_streaming(chat_module))
