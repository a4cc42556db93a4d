FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends e2fsprogs ntfs-3g libhivex-bin qemu-utils fdisk openssl ca-certificates \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
COPY bin ./bin
COPY src ./src
COPY tsconfig.json ./
USER node
CMD ["node", "bin/vmrestore.cjs", "worker"]
