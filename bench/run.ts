import { runVSphereBench } from './vsphere-restore';
import { runAzureUploadBench } from './azure-upload';
import { runVmdkImportBench } from './vmdk-import';
import { runPlanBench } from './plan';
import { runRemoteReadBench } from './repository-remote';

async function main(): Promise<void> {
  const only = process.argv[2];
  if (!only || only === 'vsphere') {
    console.log('== restore to vSphere (lab: vcsim datastore on local disk) ==');
    await runVSphereBench();
  }
  if (!only || only === 'import') {
    console.log('== import a streamOptimized and a monolithicFlat VMDK (against qemu-img convert -O raw) ==');
    await runVmdkImportBench();
  }
  if (!only || only === 'azure') {
    console.log('== upload to Azure page blob (Azurite) ==');
    await runAzureUploadBench();
  }
  if (!only || only === 'remote') {
    console.log('== full disk read through the repository data mover (against curl over HTTPS, loopback) ==');
    await runRemoteReadBench();
  }
  if (!only || only === 'plan') {
    console.log('== restore plan: 50 small VMs to vSphere and Azure ==');
    await runPlanBench();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
