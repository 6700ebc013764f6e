# One image for every function; FUNCTION_TARGET picks which one this container serves.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY local ./local
COPY functions ./functions
RUN pip install --no-cache-dir .
ENV PORT=8080 PYTHONUNBUFFERED=1
CMD ["sh", "-c", "exec functions-framework --target \"$FUNCTION_TARGET\" --source \"functions/$FUNCTION_TARGET/main.py\" --host 0.0.0.0 --port \"$PORT\""]
