/** An error answered in the ARM error envelope `{ error: { code, message, target?, details? } }`. */
export class ArmError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: {
      target?: string;
      details?: Array<{ code: string; message: string; target?: string }>;
      headers?: Record<string, string>;
    } = {},
  ) {
    super(message);
    this.name = 'ArmError';
  }

  body(): { error: Record<string, unknown> } {
    const error: Record<string, unknown> = { code: this.code, message: this.message };
    if (this.extra.target) error.target = this.extra.target;
    if (this.extra.details) error.details = this.extra.details;
    return { error };
  }
}

export const badRequest = (message: string, target?: string): ArmError => new ArmError(400, 'BadRequest', message, { target });

export const invalidParameter = (message: string, target?: string): ArmError => new ArmError(400, 'InvalidParameter', message, { target });

/** CRP's wording for a required property that is absent. */
export const missingParameter = (name: string, code = 'InvalidParameter'): ArmError =>
  new ArmError(400, code, `Required parameter '${name}' is missing (null).`, { target: name });

export const operationNotAllowed = (message: string, status = 409): ArmError => new ArmError(status, 'OperationNotAllowed', message);

export function resourceNotFound(type: string, name: string, resourceGroup: string): ArmError {
  return new ArmError(
    404,
    'ResourceNotFound',
    `The Resource '${type}/${name}' under resource group '${resourceGroup}' was not found. ` +
      'For more details please go to https://aka.ms/ARMResourceNotFoundFix',
  );
}

export function resourceGroupNotFound(resourceGroup: string): ArmError {
  return new ArmError(404, 'ResourceGroupNotFound', `Resource group '${resourceGroup}' could not be found.`);
}
