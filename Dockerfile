# Judge Q Serve on the official Deno image. Untested here (no docker on the machine this was written on):
# see README "Replicas" for what was and was not tested.
#   docker build -t judgeq-serve .
#   docker run --rm -p 8000:8000 -e JUDGEQ_API_KEY=secret judgeq-serve --context-store redis://redis:6379
FROM denoland/deno:2.9.6

WORKDIR /app
# Dependencies first (cached while only sources change): the lock pins every npm package.
COPY deno.json deno.lock ./
COPY . .
RUN deno cache server/main.ts

USER deno
EXPOSE 8000
# Listens on every interface inside the container: set JUDGEQ_API_KEY (or --api-key-file) in production.
ENTRYPOINT ["deno", "run", "-A", "--v8-flags=--max-semi-space-size=8", "server/main.ts", "--host", "0.0.0.0", "--port", "8000", "--executor", "wasm"]
