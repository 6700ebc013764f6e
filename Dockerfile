# One image for every function, the trigger and the source emulator; FUNCTION_TARGET picks the function a
# container serves (docker-compose.yml sets it, and overrides the command for the trigger and the emulator).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY local ./local
COPY functions ./functions
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 etl
# gunicorn (under functions-framework) keeps a control socket in XDG_RUNTIME_DIR: somewhere this user may write
ENV PORT=8080 PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=/tmp
USER etl
EXPOSE 8080
# functions-framework through local.function_server: gunicorn's worker timeout sized to the invocation budget (no
# worker killed during a long stage), an X-Request-ID on every request, gunicorn's own lines in the log format
CMD exec python -m local.function_server --target "$FUNCTION_TARGET" --host 0.0.0.0 --port "$PORT"
